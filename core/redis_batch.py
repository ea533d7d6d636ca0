"""Commands of many coroutines in one round trip: the event loop's Redis commands, pipelined.

A reconnect storm runs hundreds of connects at once, each a few small Redis commands in a row
(its token, its socket count, its conversations, the registry). One at a time, each command
costs redis-py a connection from the pool, a write, a wake-up for the reply and the bookkeeping
around them, about 70 us of CPU; that, not Redis, was most of a connect's CPU. Commands handed to
``submit`` during one turn of the event loop instead go out together at the end of the turn, as
one pipeline (not a transaction), and each caller gets its own reply: about 15 us a command
under load, and no extra wait when the loop is idle (a batch of one is sent as a plain command).
This is what ioredis (``enableAutoPipelining``) and rueidis do.

Order: a caller that awaits one command before submitting the next keeps its order (the second
is in a later batch). Commands of different callers in one batch have no order among them (on
a cluster they go to their nodes in parallel). A reply that is an error fails that command only
(its caller gets the exception); a connection fault fails the whole batch, each caller with the
same exception, as a plain command would have. The client's own retry applies to the pipeline
as it does to a command, so only idempotent commands belong here (the registry's scripts,
reads, counters that only grow).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

from redis import exceptions as redis_exceptions

logger = logging.getLogger("core.redis")

# A larger batch is split: one huge pipeline would hold a connection (and its replies) for long.
MAX_BATCH = 256

_Pending = tuple[tuple[Any, ...], asyncio.Future[Any]]


class Batcher:
    """Pipelines the commands submitted during one loop turn (one instance per event loop)."""

    def __init__(self, client: Any, *, max_batch: int = MAX_BATCH) -> None:
        self.client = client
        self.max_batch = max_batch
        self.pending: list[_Pending] = []
        self.loop = asyncio.get_running_loop()
        # Batches in flight (a reference each, so the loop does not drop a running one).
        self.running: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches and commands sent (the tests read them)
        self.commands = 0

    def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command (``"GET", key`` as for ``execute_command``); the future gets its
        reply, or the exception that failed it."""
        future: asyncio.Future[Any] = self.loop.create_future()
        if not self.pending:
            # A fresh context: the flush belongs to no caller (nor to its log fields).
            self.loop.call_soon(self._flush, context=contextvars.Context())
        self.pending.append((args, future))
        return future

    async def execute(self, *args: Any) -> Any:
        return await self.submit(*args)

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), self.max_batch):
            batch = pending[start : start + self.max_batch]
            task = self.loop.create_task(self._send(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        self.batches += 1
        self.commands += len(batch)
        try:
            try:
                if len(batch) == 1:
                    args, future = batch[0]
                    replies: list[Any] = [await self.client.execute_command(*args)]
                else:
                    pipe = self.client.pipeline(transaction=False)
                    for args, _ in batch:
                        pipe.execute_command(*args)
                    replies = list(await pipe.execute(raise_on_error=False))
            except (AttributeError, RuntimeError) as exc:
                # redis-py's async cluster client, when a master dies under it, can fail on the
                # connection it just closed (no stream writer, transport closed), for a plain
                # command as for a pipeline: the same Redis fault as a ConnectionError (a 503),
                # not a bug of ours.
                raise redis_exceptions.ConnectionError(
                    f"connection lost under a command ({exc.__class__.__name__})"
                ) from exc
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 (each caller gets it as its command's failure)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
