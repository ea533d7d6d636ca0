"""The presence shape, one presenter for HTTP, the socket and events alike."""

from __future__ import annotations

from typing import Any

from chat.presenters import iso

from .models import UserStatus


def public_state(row: UserStatus) -> tuple[str, str, bool]:
    """(status, text, online) as others see them: offline and invisible users as offline."""
    if not row.online or row.status == UserStatus.Status.INVISIBLE:
        return "offline", "", False
    return row.status, row.text, True


def presence_view(row: UserStatus, *, public: bool) -> dict[str, Any]:
    """The ``presence`` frame body of a user, as the user itself (public=False) or others see it.
    The public view carries the public version and last_seen, which move only with it."""
    if public:
        status, text, online = public_state(row)
        last_seen, version = row.public_last_seen, row.public_version
    else:
        online = row.online
        status, text = (row.status, row.text) if online else ("offline", "")
        last_seen, version = row.last_seen, row.version
    return {
        "user_id": row.user_id,
        "status": status,
        "text": text,
        "online": online,
        "last_seen": iso(last_seen),
        "version": version,
    }
