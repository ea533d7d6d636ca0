"""Reap dead instances now instead of waiting for a living instance to do it."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandParser

from presence import selectors
from realtime.registry import get_registry

from ._cluster import from_registry, require_cluster


class Command(BaseCommand):
    help = (
        "Remove the connections of every instance whose heartbeat is older than INSTANCE_TTL_SECONDS "
        "(their users go offline after the grace period unless they reconnect)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="List the dead instances; change nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        require_cluster()
        dead = sorted(i["instance_id"] for i in from_registry(selectors.instances) if not i["alive"])
        if options["dry_run"]:
            self.stdout.write(f"{len(dead)} dead instance(s)" + (f": {', '.join(dead)}" if dead else ""))
            return
        reaped = from_registry(async_to_sync(get_registry().reap_dead))
        # Another instance may have reaped some of them meanwhile: report what is gone now.
        still = {i["instance_id"] for i in from_registry(selectors.instances)}
        gone = [i for i in dead if i not in still]
        names = f": {', '.join(gone)}" if gone else ""
        self.stdout.write(f"Reaped {len(reaped)} connection(s) of {len(gone)} dead instance(s){names}")
