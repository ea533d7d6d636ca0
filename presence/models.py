"""The user's chosen status (the source of truth, also in single mode) and the Firestore outbox."""

from __future__ import annotations

from django.conf import settings
from django.db import models

STATUS_TEXT_MAX_CHARS = 200


class UserStatus(models.Model):
    class Status(models.TextChoices):
        ONLINE = "online", "Online"
        AWAY = "away", "Away"
        BUSY = "busy", "Busy"
        INVISIBLE = "invisible", "Invisible"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ONLINE)
    text = models.CharField(max_length=STATUS_TEXT_MAX_CHARS, blank=True, default="")
    # Grows with every change of the user's presence (status, text, online or offline), so a
    # client and the Firestore mirror can drop a stale one.
    version = models.PositiveBigIntegerField(default=0)
    online = models.BooleanField(default=False)
    last_seen = models.DateTimeField(null=True, blank=True)
    # What others see has its own version and last_seen, which move only when the public view
    # moves: an invisible user's connects, disconnects and text changes reveal nothing.
    public_version = models.PositiveBigIntegerField(default=0)
    public_last_seen = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "user statuses"
        # The operator permissions (presence/roles.py groups them into roles). Registry data
        # is not a model, so they hang on this one; "manage statuses" is change_userstatus.
        permissions = [
            ("view_connections", "Can view live connections"),
            ("view_instances", "Can view chat instances"),
            ("disconnect_user", "Can disconnect a user's sockets"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.status} ({'online' if self.online else 'offline'})"


class StatusOutbox(models.Model):
    """One row per user whose latest presence still has to reach Firestore. Writes coalesce:
    a newer transition overwrites the row, so only the latest state is ever sent."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="+")
    version = models.PositiveBigIntegerField()
    payload = models.JSONField()
    enqueued_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    last_error = models.CharField(max_length=200, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.user_id} v{self.version}"
