"""Conversations, their participants and their messages."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

# Limits of the fields, used alike by the services, the serializers and the schemas.
TITLE_MAX_CHARS = 200
CLIENT_MSG_ID_MAX_CHARS = 64


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=TITLE_MAX_CHARS, blank=True, default="")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_conversations"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The seq of the newest message. Incremented under the row lock in the same transaction
    # as the message insert, so seqs are gap-free: a rolled-back send rolls the counter back.
    last_seq = models.PositiveBigIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title or f"conversation {self.id}"


class Participant(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="participations")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)
    last_read_seq = models.PositiveBigIntegerField(default=0)
    last_read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "user"], name="uniq_participant")]
        indexes = [models.Index(fields=["user", "conversation"], name="participant_user_idx")]
        ordering = ["joined_at", "id"]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.conversation_id}"


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveBigIntegerField()
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    body = models.TextField()
    # NULL, not "", when absent: the unique constraint below applies only to given ids.
    client_msg_id = models.CharField(max_length=CLIENT_MSG_ID_MAX_CHARS, null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="uniq_message_seq"),
            models.UniqueConstraint(
                fields=["conversation", "sender", "client_msg_id"],
                condition=Q(client_msg_id__isnull=False),
                name="uniq_client_msg_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id}#{self.seq}"


class CredentialChanges(models.Model):
    """One row whose ``generation`` database triggers raise whenever a credential may have
    ended: a user's ``is_active`` or password changed, a user, token or session row deleted,
    by any writer (a bulk ``update()``, raw SQL, another program). Every instance reads it once
    a second and re-checks its sockets' credentials only when it moved (chat/revocation.py), so
    the steady state costs one tiny query, not one lookup per live socket."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    generation = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "credential changes"

    def __str__(self) -> str:
        return f"generation {self.generation}"
