"""A deactivated user's live sockets close at once, on every instance, with 4403."""

from __future__ import annotations

from typing import Any

from chat import events
from realtime.protocol import CloseCode


def close_sockets_of_deactivated_user(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        events.disconnect_user(user_id=instance.pk, code=CloseCode.DEACTIVATED)
