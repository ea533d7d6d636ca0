"""Push every user's current presence to Firestore (after an outage, or a new collection)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from presence import firestore
from presence.models import StatusOutbox
from presence.services import resync_all


class Command(BaseCommand):
    help = "Queue every user's current status for Firestore; with --now, send it before returning."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--now", action="store_true", help="Send the queue now instead of leaving it to the instances."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not firestore.enabled():
            raise CommandError("Firestore sync is off: set FIRESTORE_PROJECT_ID (or GOOGLE_CLOUD_PROJECT).")
        queued = resync_all()
        self.stdout.write(f"queued {queued} user statuses")
        if options["now"]:
            for _ in range(1000):
                if not firestore.sync_due():
                    break
            left = StatusOutbox.objects.count()
            if left:
                raise CommandError(f"{left} statuses could not be sent yet; the instances will retry.")
            self.stdout.write("all sent")
