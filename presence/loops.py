"""Presence's background loops, run by the runtime on every instance."""

from __future__ import annotations

import asyncio
import logging

from core.db import db_call
from realtime.registry import get_registry

from .services import went_offline

logger = logging.getLogger("presence")

GRACE_POLL_SECONDS = 0.5


async def grace_loop() -> None:
    """Finish grace periods: any living instance takes users whose grace ended (even when the
    instance that started it died) and makes them offline."""
    registry = get_registry()
    while True:
        await asyncio.sleep(GRACE_POLL_SECONDS)
        try:
            for user_id in await registry.due_offline():
                await db_call(went_offline)(user_id=user_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.warning("presence offline round failed", extra={"error": exc.__class__.__name__})
