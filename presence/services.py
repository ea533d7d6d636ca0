"""Writes of the presence app: operator actions on connections."""

from __future__ import annotations

from asgiref.sync import async_to_sync

from chat import events
from chat.selectors import active_user

from .registry import get_registry

CLOSE_DISCONNECTED_BY_OPERATOR = 4000


def user_disconnect(*, user_id: object, code: int = CLOSE_DISCONNECTED_BY_OPERATOR) -> int:
    """Close every socket of the user, on every instance. Returns how many were open."""
    user = active_user(user_id=user_id)
    count = async_to_sync(get_registry().user_connection_count)(user.pk)
    events.disconnect_user(user_id=user.pk, code=code)
    return int(count)
