"""Running ORM code from async code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async

P = ParamSpec("P")
R = TypeVar("R")


def db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in the thread pool with Django's connection handling (old connections are
    closed around it). Not thread-sensitive: channels' default runs every database call of the
    process on one shared thread, which would queue all sockets behind the slowest query (or
    behind a Firestore call stuck on a timeout)."""
    wrapped: Any = database_sync_to_async(func, thread_sensitive=False)
    return wrapped  # type: ignore[no-any-return]
