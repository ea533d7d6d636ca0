"""Mirror of each user's effective status in Google Firestore.

Document ``{FIRESTORE_STATUS_COLLECTION}/{user_id}`` with ``user_id, status, text, online,
last_seen, version`` and ``updated_at`` (server timestamp). Presence changes never wait for
Firestore: they queue the latest state in the ``StatusOutbox`` table (coalesced per user), and a
background loop on every instance drains it with retries and backoff. A write never moves a
document backwards: it is a compare-and-set on the stored ``version`` (create-if-absent, or
update with a last-update-time precondition), so concurrent writers end with the newest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from core import metrics
from core.db import db_call

logger = logging.getLogger("presence.firestore")

CALL_TIMEOUT_SECONDS = 2.0
LEASE_SECONDS = 30
BATCH = 50
MAX_BACKOFF_SECONDS = 30.0
IDLE_POLL_SECONDS = 0.5
# While writes fail, one read this often tells when Firestore is back; then every row waiting
# out its backoff is sent at once, rather than up to MAX_BACKOFF_SECONDS later.
PROBE_INTERVAL_SECONDS = 1.0

# Set by a failed write, cleared by a successful one or a probe that answers (this process).
_failing = False

_client: Any = None
_client_key: tuple[str, str] | None = None
_client_lock = threading.Lock()


def enabled() -> bool:
    return bool(settings.FIRESTORE_PROJECT_ID)


def get_client() -> Any:
    """The Firestore client for the configured project (and emulator, when set)."""
    global _client, _client_key
    wanted = (settings.FIRESTORE_PROJECT_ID, settings.FIRESTORE_EMULATOR_HOST)
    with _client_lock:
        if _client is None or _client_key != wanted:
            from google.cloud import firestore

            if settings.FIRESTORE_EMULATOR_HOST:
                # The client library reads the emulator address from the environment.
                os.environ["FIRESTORE_EMULATOR_HOST"] = settings.FIRESTORE_EMULATOR_HOST
            _client = firestore.Client(project=settings.FIRESTORE_PROJECT_ID)
            _client_key = wanted
        return _client


def reset_client() -> None:
    """Forget the client after a failure: gRPC keeps a failed channel in reconnect backoff
    (growing to minutes), so a fresh one reconnects as soon as Firestore is back."""
    global _client, _client_key
    with _client_lock:
        old, _client, _client_key = _client, None, None
    if old is not None:
        try:
            old.close()
        except Exception:  # closing a broken channel may fail too; nothing to do about it  # noqa: BLE001
            logger.debug("closing the Firestore client failed")


def _doc(user_id: int) -> Any:
    return get_client().collection(settings.FIRESTORE_STATUS_COLLECTION).document(str(user_id))


def write_status(*, user_id: int, version: int, payload: dict[str, Any]) -> bool:
    """Store ``payload`` unless the document already holds this version or a newer one.
    Returns whether it wrote."""
    from google.api_core import exceptions as gexc
    from google.cloud import firestore

    data = {**payload, "user_id": user_id, "version": version, "updated_at": firestore.SERVER_TIMESTAMP}
    client = get_client()
    ref = _doc(user_id)
    for _ in range(5):
        snap = ref.get(retry=None, timeout=CALL_TIMEOUT_SECONDS)
        try:
            if not snap.exists:
                ref.create(data, retry=None, timeout=CALL_TIMEOUT_SECONDS)
                return True
            if int(snap.get("version") or 0) >= version:
                return False
            ref.update(
                data,
                option=client.write_option(last_update_time=snap.update_time),
                retry=None,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            return True  # noqa: TRY300
        except (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.Aborted):
            continue  # another writer got there first: read again and compare
    raise RuntimeError("Firestore write kept conflicting")


def sync_due(limit: int = BATCH) -> int:
    """Send due outbox rows to Firestore. Returns how many rows were attempted."""
    from .models import StatusOutbox

    now = timezone.now()
    with transaction.atomic():
        rows = list(
            StatusOutbox.objects.select_for_update(skip_locked=True)
            .filter(next_attempt_at__lte=now)
            .order_by("next_attempt_at")[:limit]
        )
        # A lease, so another instance does not send the same rows meanwhile.
        StatusOutbox.objects.filter(pk__in=[r.pk for r in rows]).update(
            next_attempt_at=now + timedelta(seconds=LEASE_SECONDS)
        )
    global _failing
    for row in rows:
        try:
            write_status(user_id=row.user_id, version=row.version, payload=row.payload)
        except Exception as exc:  # noqa: BLE001
            _failing = True
            reset_client()
            attempts = row.attempts + 1
            delay = min(MAX_BACKOFF_SECONDS, 0.5 * (2 ** min(attempts, 10)))
            StatusOutbox.objects.filter(pk=row.pk, version=row.version).update(
                attempts=attempts,
                next_attempt_at=timezone.now() + timedelta(seconds=delay),
                last_error=exc.__class__.__name__,
            )
            logger.warning(
                "Firestore write failed; will retry",
                extra={"target_user": row.user_id, "attempts": attempts, "error": exc.__class__.__name__},
            )
            continue
        _failing = False
        logger.debug("status sent to Firestore", extra={"target_user": row.user_id, "version": row.version})
        # Delete only what was sent: a newer state queued meanwhile stays for the next round.
        StatusOutbox.objects.filter(pk=row.pk, version=row.version).delete()
    _update_gauges()
    return len(rows)


def _update_gauges() -> None:
    from .models import StatusOutbox

    agg = StatusOutbox.objects.aggregate(oldest=Min("enqueued_at"))
    metrics.FIRESTORE_QUEUE.set(StatusOutbox.objects.count())
    oldest = agg["oldest"]
    metrics.FIRESTORE_LAG.set((timezone.now() - oldest).total_seconds() if oldest else 0.0)


def probe_and_release() -> int:
    """After failed writes: if Firestore answers a read now, make every row that waits out a
    backoff due at once (returns how many; a row another instance holds leased may be sent
    twice, which the versioned write makes harmless)."""
    from .models import StatusOutbox

    global _failing
    _probe()
    _failing = False
    now = timezone.now()
    released = StatusOutbox.objects.filter(attempts__gt=0, next_attempt_at__gt=now).update(next_attempt_at=now)
    if released:
        logger.info("Firestore answers again; sending the backed-off statuses", extra={"count": released})
    return released


async def run_sync_loop() -> None:
    """Drain the outbox forever (one per instance; rows are leased, so instances share)."""
    probed_at = 0.0
    while True:
        try:
            if enabled() and _failing and time.monotonic() - probed_at >= PROBE_INTERVAL_SECONDS:
                probed_at = time.monotonic()
                with contextlib.suppress(Exception):  # still down: the rows keep their backoff
                    await db_call(probe_and_release)()
            attempted = await db_call(sync_due)() if enabled() else 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.warning("status sync round failed", extra={"error": exc.__class__.__name__})
            attempted = 0
        await asyncio.sleep(0 if attempted >= BATCH else IDLE_POLL_SECONDS)


def _probe() -> None:
    try:
        _doc(0).get(retry=None, timeout=CALL_TIMEOUT_SECONDS)
    except Exception:
        reset_client()
        raise


async def check() -> None:
    """Health: a real read from Firestore."""
    if not enabled():
        raise RuntimeError("Firestore sync is not configured")
    await asyncio.to_thread(_probe)
