"""Close every socket of a user, on every instance, with close code 4000."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ApplicationError
from presence import services

from ._cluster import from_registry, require_cluster


class Command(BaseCommand):
    help = "Close USERNAME's WebSocket connections on every instance (close code 4000); clients may reconnect."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        require_cluster()
        username = options["username"]
        User = get_user_model()  # noqa: N806
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        try:
            closed = from_registry(lambda: services.user_disconnect(user_id=user.pk))
        except ApplicationError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(f"Closing {closed} connection(s) of {username} on every instance (close code 4000)")
