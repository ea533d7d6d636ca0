"""Reads of the connection registry for the operator endpoints and commands."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from chat.presenters import iso
from realtime.registry import Connection, Instance, blocking


def _ts(value: float) -> str | None:
    import datetime as dt

    return iso(dt.datetime.fromtimestamp(value, tz=dt.UTC)) if value else None


def connection_dict(conn: Connection) -> dict[str, Any]:
    return {
        "connection_id": conn.connection_id,
        "user_id": conn.user_id,
        "instance_id": conn.instance_id,
        "connected_at": _ts(conn.connected_at),
        "last_seen": _ts(conn.last_seen),
        "remote_addr": conn.remote_addr,
        "user_agent": conn.user_agent,
    }


def instance_dict(inst: Instance) -> dict[str, Any]:
    return {
        "instance_id": inst.instance_id,
        "connections": inst.connections,
        "last_heartbeat": _ts(inst.last_heartbeat),
        "heartbeat_age_s": round(time.time() - inst.last_heartbeat, 1),
        "alive": inst.alive,
    }


def user_connections(*, user_id: int) -> list[dict[str, Any]]:
    conns = blocking(lambda registry: registry.user_connections(user_id))
    return [connection_dict(c) for c in sorted(conns, key=lambda c: c.connected_at)]


def cluster_connections() -> dict[str, Any]:
    conns = blocking(lambda registry: registry.all_connections())
    by_instance = Counter(c.instance_id for c in conns)
    return {
        "total": len(conns),
        "by_instance": dict(sorted(by_instance.items())),
        "users_online": len({c.user_id for c in conns}),
        "connections": [connection_dict(c) for c in conns],
    }


def instances() -> list[dict[str, Any]]:
    return [instance_dict(i) for i in blocking(lambda registry: registry.instances())]


def presence_of(*, viewer_id: int, user_id: object, viewer_is_staff: bool = False) -> dict[str, Any]:
    """A user's presence as the viewer may see it: self, co-participants and holders of
    presence.view_userstatus; else 403, the same for an id that does not exist."""
    from chat.selectors import active_user, shares_conversation
    from core.errors import NotFound, PermissionDenied

    from .models import UserStatus
    from .presenters import presence_view

    try:
        target = int(str(user_id))
    except ValueError:
        raise NotFound("No such user.") from None
    is_self = target == viewer_id
    # Refused alike whether or not the user exists: the answer reveals no ids.
    if not (is_self or viewer_is_staff or shares_conversation(user_id=viewer_id, other_id=target)):
        raise PermissionDenied("You share no conversation with this user.")
    user = active_user(user_id=target)
    row = UserStatus.objects.filter(user_id=user.pk).first() or UserStatus(user_id=user.pk)
    return presence_view(row, public=not is_self)


def presence_snapshot(*, user_id: int) -> list[dict[str, Any]]:
    """The current presence of every user sharing a conversation with ``user_id``."""
    from chat.selectors import contact_ids, require_active

    from .models import UserStatus
    from .presenters import presence_view

    ids = sorted(contact_ids(user_id=user_id, active=True))
    if not ids:  # no contacts, or a deactivated account (the query joins the caller's row)
        require_active(user_id=user_id)
    rows = {r.user_id: r for r in UserStatus.objects.filter(user_id__in=ids)}
    return [presence_view(rows.get(uid) or UserStatus(user_id=uid), public=True) for uid in ids]
