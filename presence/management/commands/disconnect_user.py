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
        parser.add_argument(
            "--as",
            dest="actor",
            metavar="OPERATOR",
            help="Act as this operator: refused unless they hold presence.disconnect_user (and logged).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        require_cluster()
        username = options["username"]
        User = get_user_model()  # noqa: N806
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        actor = None
        if options.get("actor"):
            try:
                actor = User._default_manager.get_by_natural_key(options["actor"])
            except User.DoesNotExist:
                raise CommandError(f"no user named {options['actor']!r}") from None
        try:
            closed = from_registry(lambda: services.user_disconnect(user_id=user.pk, actor=actor))
        except ApplicationError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(f"Closing {closed} connection(s) of {username} on every instance (close code 4000)")
