"""Writes of the presence app: status changes, online/offline transitions, operator actions.

Every change of a user's presence bumps ``UserStatus.version`` in one transaction, which also
queues the new state for Firestore (the outbox) and, after commit, sends ``presence`` events:
the user's own sockets see their real status; everyone sharing a conversation sees the public
view (``invisible`` and offline users as ``offline``). The public event goes once to each of
the user's conversation groups, not to each contact: a user in a 200-member conversation costs
one publish, and each instance delivers it once per local socket (realtime/router.py).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from chat import events, ratelimit
from chat.selectors import conversation_ids_of, require_active
from core.errors import Invalid, NotFound
from core.validation import check_text
from realtime.protocol import CloseCode
from realtime.registry import user_connection_count_blocking

from . import firestore
from .models import STATUS_TEXT_MAX_CHARS, StatusOutbox, UserStatus
from .presenters import presence_view, public_state

logger = logging.getLogger("presence")


PUBLIC_FIELDS = ["public_version", "public_last_seen"]


def _bump_public(row: UserStatus, before: tuple[str, str, bool]) -> bool:
    """After a change of ``row``: move the public version (and last_seen, when the public
    online flag flips) if what others see changed. Returns whether it did."""
    after = public_state(row)
    if after == before:
        return False
    row.public_version += 1
    if after[2] != before[2]:
        row.public_last_seen = timezone.now()
    return True


def _row_for_update(user_id: int) -> UserStatus:
    row = UserStatus.objects.select_for_update().filter(user_id=user_id).first()
    if row is not None:
        return row
    try:
        with transaction.atomic():
            UserStatus.objects.create(user_id=user_id)
    except IntegrityError:  # created concurrently
        pass
    return UserStatus.objects.select_for_update().get(user_id=user_id)


def _active_row_for_update(user_id: int) -> UserStatus:
    """The user's row, locked, only while the account is active: the check rides on the
    locking read (a join), so an action re-checks the account at its time at no extra query; a
    miss (no row yet, or a deactivated account) looks again."""
    row = UserStatus.objects.select_for_update(of=("self",)).filter(user_id=user_id, user__is_active=True).first()
    if row is not None:
        return row
    require_active(user_id=user_id)
    return _row_for_update(user_id)


def _publish(row: UserStatus, conversation_ids: list[str] | None = None, *, public_changed: bool = True) -> None:
    """Queue the state for Firestore and send the events after commit. ``conversation_ids``
    (the user's conversations) saves a query when the caller already has them. When the
    public view did not change, only the user's own sockets hear of it."""
    public = presence_view(row, public=True)
    if public_changed and conversation_ids is None:
        conversation_ids = conversation_ids_of(user_id=row.user_id)
    events.versioned(
        user_id=row.user_id,
        version=row.version,
        conversation_ids=(conversation_ids or []) if public_changed else [],
        public={"type": "presence", **public} if public_changed else None,
        own={"type": "presence", **presence_view(row, public=False)},
    )
    # Firestore holds the public view (others may read it): only its changes go there.
    if public_changed and firestore.enabled():  # without Firestore nothing to queue (presence_resync fills it later)
        _queue_for_firestore(row, public)


def _queue_for_firestore(row: UserStatus, public: dict[str, Any]) -> None:
    now = timezone.now()
    # Coalesce: only the latest state is sent; the lag counts from the oldest unsent one.
    fields = {"version": row.public_version, "payload": public, "next_attempt_at": now, "attempts": 0}
    if StatusOutbox.objects.filter(user_id=row.user_id).update(**fields):
        return
    try:
        with transaction.atomic():
            StatusOutbox.objects.create(user_id=row.user_id, enqueued_at=now, **fields)
    except IntegrityError:  # queued concurrently (presence_resync): overwrite with this state
        StatusOutbox.objects.filter(user_id=row.user_id).update(**fields)


@transaction.atomic
def status_set(*, user_id: int, status: Any, text: Any = None) -> dict[str, Any]:
    """Set the chosen status (online, away, busy, invisible) and optional text."""
    if status not in UserStatus.Status.values:
        raise Invalid.field("status", f"Must be one of {', '.join(UserStatus.Status.values)}.")
    if text is not None and (not isinstance(text, str) or len(text) > STATUS_TEXT_MAX_CHARS):
        raise Invalid.field("text", f"Must be a string of at most {STATUS_TEXT_MAX_CHARS} characters.")
    if text is not None:
        check_text(text, "text")
    ratelimit.check("status", user_id=user_id)
    row = _active_row_for_update(user_id)
    new_text = row.text if text is None else text.strip()
    if (row.status, row.text) != (status, new_text):
        before = public_state(row)
        row.status, row.text = status, new_text
        row.version += 1
        changed = _bump_public(row, before)
        row.save(update_fields=["status", "text", "version", "updated_at", *PUBLIC_FIELDS])
        _publish(row, public_changed=changed)
    return presence_view(row, public=False)


@transaction.atomic
def went_online(*, user_id: int, conversation_ids: list[str] | None = None) -> None:
    """The user's first connection anywhere (after being offline)."""
    row = _row_for_update(user_id)
    if row.online:
        return
    before = public_state(row)
    row.online = True
    row.last_seen = timezone.now()
    row.version += 1
    changed = _bump_public(row, before)
    row.save(update_fields=["online", "last_seen", "version", "updated_at", *PUBLIC_FIELDS])
    _publish(row, conversation_ids, public_changed=changed)


@transaction.atomic
def went_online_many(*, users: dict[int, list[str] | None]) -> int:
    """``went_online`` for a batch of users in one transaction (a reconnect storm brings
    thousands a second): one locking read, one update, one outbox upsert, whatever the size.
    Returns how many users changed."""
    ids = sorted(users)
    rows = {row.user_id: row for row in UserStatus.objects.select_for_update().filter(user_id__in=ids)}
    missing = [uid for uid in ids if uid not in rows]
    if missing:
        UserStatus.objects.bulk_create([UserStatus(user_id=uid) for uid in missing], ignore_conflicts=True)
        rows.update({row.user_id: row for row in UserStatus.objects.select_for_update().filter(user_id__in=missing)})
    now = timezone.now()
    changed = [rows[uid] for uid in ids if uid in rows and not rows[uid].online]
    public_changed: set[int] = set()
    # One UPDATE per kind of change (at most three), each moving the counters in the database as
    # on the locked rows in memory; bulk_update's CASE per row and field cost more CPU than the
    # rest of a storm's batch.
    groups: dict[tuple[bool, bool], list[int]] = {}
    for row in changed:
        before = public_state(row)
        last_seen_before = row.public_last_seen
        row.online, row.last_seen, row.updated_at = True, now, now
        row.version += 1
        bumped = _bump_public(row, before)
        if bumped:  # not for an invisible user: others learn nothing
            public_changed.add(row.user_id)
        seen_moved = row.public_last_seen != last_seen_before
        if seen_moved:
            row.public_last_seen = now  # one value for the group's UPDATE
        groups.setdefault((bumped, seen_moved), []).append(row.user_id)
    if not changed:
        return 0
    for (bumped, seen_moved), user_ids in groups.items():
        fields: dict[str, Any] = {"online": True, "last_seen": now, "updated_at": now, "version": F("version") + 1}
        if bumped:
            fields["public_version"] = F("public_version") + 1
        if seen_moved:
            fields["public_last_seen"] = now
        UserStatus.objects.filter(user_id__in=user_ids).update(**fields)
    outbox: list[StatusOutbox] = []
    for row in changed:
        public = presence_view(row, public=True)
        visible = row.user_id in public_changed
        conversation_ids = users[row.user_id] if visible else []
        if conversation_ids is None:
            conversation_ids = conversation_ids_of(user_id=row.user_id)
        events.versioned(
            user_id=row.user_id,
            version=row.version,
            conversation_ids=conversation_ids,
            public={"type": "presence", **public} if visible else None,
            own={"type": "presence", **presence_view(row, public=False)},
        )
        if not visible:
            continue  # Firestore holds the public view: nothing changed there
        outbox.append(
            StatusOutbox(
                user_id=row.user_id,
                version=row.public_version,
                payload=public,
                enqueued_at=now,
                next_attempt_at=now,
                attempts=0,
            )
        )
    if firestore.enabled():
        # Coalesced as _queue_for_firestore: an unsent row keeps its enqueued_at (the lag counts from it).
        StatusOutbox.objects.bulk_create(
            outbox,
            update_conflicts=True,
            unique_fields=["user"],
            update_fields=["version", "payload", "next_attempt_at", "attempts"],
        )
    return len(changed)


@transaction.atomic
def went_offline(*, user_id: int) -> None:
    """The user's grace period ended with no connection left on any instance."""
    row = _row_for_update(user_id)
    if not row.online:
        return
    if user_connection_count_blocking(user_id) > 0:
        return  # reconnected while this transition was on its way
    before = public_state(row)
    row.online = False
    row.last_seen = timezone.now()
    row.version += 1
    changed = _bump_public(row, before)
    row.save(update_fields=["online", "last_seen", "version", "updated_at", *PUBLIC_FIELDS])
    _publish(row, public_changed=changed)


def user_disconnect(*, user_id: object, code: int = CloseCode.DISCONNECTED, actor: Any = None) -> int:
    """Close every socket of the user, on every instance. Returns how many were open. An
    ``actor`` (the operator asking) must hold presence.disconnect_user; without one the
    caller is the system itself (a management command run with shell access)."""
    from django.contrib.auth import get_user_model

    from .roles import DISCONNECT_USER, require

    if actor is not None:
        require(actor, DISCONNECT_USER)

    try:
        uid = int(str(user_id))
    except ValueError:
        raise NotFound("No such user.") from None
    # Deactivated users too: that is when an operator most wants their sockets gone.
    if not get_user_model().objects.filter(pk=uid).exists():
        raise NotFound("No such user.")
    count = user_connection_count_blocking(uid)
    events.disconnect_user(user_id=uid, code=code)
    return int(count)


def resync_all() -> int:
    """Queue every user's current presence for Firestore (``manage.py presence_resync``)."""
    count = 0
    for row in UserStatus.objects.all().iterator():
        with transaction.atomic():
            public = presence_view(row, public=True)
            now = timezone.now()
            StatusOutbox.objects.update_or_create(
                user_id=row.user_id,
                defaults={"version": row.public_version, "payload": public, "next_attempt_at": now, "attempts": 0},
                create_defaults={
                    "version": row.public_version,
                    "payload": public,
                    "enqueued_at": now,
                    "next_attempt_at": now,
                },
            )
        count += 1
    return count
