"""Users coming online, written in batches behind the registry.

The registry's Redis step decides that a user came online (``Registry.add`` returns it, in the
same script that records the connection), so a socket's connect waits for no database write:
the transition is queued here and a runtime loop writes what queued meanwhile in one
transaction (``services.went_online_many``: the database row, the Firestore outbox, the
``presence`` events). Under a reconnect storm the batches grow with the load; alone, a user's
transition is written at once. A user whose grace period already ended when its batch is
written (it left again) is skipped: the registry no longer counts it online.
"""

from __future__ import annotations

import asyncio
import logging

from core.db import db_call
from realtime.registry import get_registry

from .services import went_online_many

logger = logging.getLogger("presence")

BATCH_MAX = 500
RETRY_SECONDS = 0.5
ATTEMPTS = 5


class OnlineBatcher:
    """One queue per event loop (tests run one loop per test)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[int, list[str]]] | None = None

    def queue(self) -> asyncio.Queue[tuple[int, list[str]]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
        return self._queue

    def put(self, user_id: int, conversation_ids: list[str]) -> None:
        self.queue().put_nowait((user_id, conversation_ids))

    def _take(self, first: tuple[int, list[str]] | None) -> dict[int, list[str] | None]:
        queue = self.queue()
        batch: dict[int, list[str] | None] = {}
        if first is not None:
            batch[first[0]] = first[1]
        while len(batch) < BATCH_MAX and not queue.empty():
            user_id, conversation_ids = queue.get_nowait()
            batch[user_id] = conversation_ids
        return batch

    async def write(self, batch: dict[int, list[str] | None]) -> None:
        """Write one batch, trying again a few times when Redis or the database fails."""
        for attempt in range(ATTEMPTS):
            try:
                online = await get_registry().online_users(list(batch))
                wanted = {uid: cids for uid, cids in batch.items() if uid in online}
                if wanted:
                    await db_call(went_online_many)(users=wanted)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "presence online batch failed",
                    extra={"users": len(batch), "attempt": attempt + 1, "error": exc.__class__.__name__},
                )
                await asyncio.sleep(RETRY_SECONDS * (attempt + 1))

    async def run(self) -> None:
        queue = self.queue()
        while True:
            first = await queue.get()
            await self.write(self._take(first))

    async def flush(self) -> None:
        """Write what is queued (drain on SIGTERM)."""
        while not self.queue().empty():
            await self.write(self._take(None))


batcher = OnlineBatcher()
