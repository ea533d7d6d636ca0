"""Running ORM code from async code."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async

P = ParamSpec("P")
R = TypeVar("R")

_in_flight = 0


def db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in the thread pool with Django's connection handling (old connections are
    closed around it). Not thread-sensitive: channels' default runs every database call of the
    process on one shared thread, which would queue all sockets behind the slowest query (or
    behind a Firestore call stuck on a timeout)."""
    wrapped: Any = database_sync_to_async(func, thread_sensitive=False)

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        global _in_flight
        _in_flight += 1
        try:
            return await wrapped(*args, **kwargs)  # type: ignore[no-any-return]
        finally:
            _in_flight -= 1

    return call


async def drain(timeout: float) -> int:
    """Wait (up to ``timeout``) for database calls in flight to finish; returns how many are
    left. Used at shutdown: a call still running when the loop stops could block the exit (its
    events hop back to the loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _in_flight and loop.time() < deadline:  # noqa: ASYNC110 (once, at shutdown; calls finish in threads)
        await asyncio.sleep(0.05)
    return _in_flight
