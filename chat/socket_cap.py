"""A cap on live sockets per user across the cluster (``WS_MAX_SOCKETS_PER_USER``).

Counted in the connection registry at connect; concurrent connects may pass it by a few (a
soft cap, there to stop one account from holding hundreds of sockets, not an exact quota)."""

from __future__ import annotations

import logging

from django.conf import settings

from realtime.protocol import CloseCode
from realtime.registry import get_registry

logger = logging.getLogger("chat.ws")

CLOSE_TOO_MANY_SOCKETS = CloseCode.TOO_MANY_SOCKETS


async def over_cap(user_id: int) -> bool:
    try:
        count = await get_registry().user_connection_count(user_id)
    except Exception as exc:
        # The connect path meets the same registry right after and handles its faults.
        logger.debug("socket cap not checked", extra={"error": exc.__class__.__name__})
        return False
    return bool(count >= settings.WS_MAX_SOCKETS_PER_USER)
