"""Running ORM code from async code."""

from __future__ import annotations

import asyncio
import functools
import os
import time
import types
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")

_in_flight = 0

# Database calls (and the Redis calls services make inside them) run on a thread pool of their
# own once the runtime has started, the size of the loop's default one. When Redis is cut off
# (packets dropped) every call in flight sits on its timeouts; in the loop's default executor
# they would also hold up what Django and asyncio run there: Django hands every 4xx and 5xx
# response to a default-executor thread for its log line before sending it, so /api/health's
# 503, the very answer that sends the balancer elsewhere, waited behind them for many seconds.
CALL_THREADS = min(32, (os.cpu_count() or 1) + 4)
_executor: ThreadPoolExecutor | None = None


def start_executor() -> None:
    """Give database calls their own threads (the runtime, when it starts on the server's loop)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=CALL_THREADS, thread_name_prefix="db-call")


def stop_executor() -> None:
    """Back to the loop's default executor; the threads end once their calls in flight return."""
    global _executor
    executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=False)


# Work that code inside a db_call hands back to the event loop (see defer_to_loop).
_loop_work: ContextVar[list[Callable[[], Awaitable[None]]] | None] = ContextVar("db_loop_work", default=None)


def defer_to_loop(factory: Callable[[], Awaitable[None]]) -> bool:
    """From code running inside ``db_call``: await ``factory()`` on the event loop right after
    the call returns (or raises), before its caller resumes. Returns False outside a db_call,
    where the caller has to do the work itself. This is how events published by a service
    called from a consumer skip the hop from the worker thread back to the loop."""
    work = _loop_work.get()
    if work is None:
        return False
    work.append(factory)
    return True


# A connection that served a call without error this recently is not health-checked again
# (Django's CONN_HEALTH_CHECKS would otherwise add a "SELECT 1" round trip to every db_call,
# since each one starts like a new request). One that died in between fails its next query;
# Django then closes it at the end of that call, and the call after gets a fresh one.
HEALTH_CHECK_AFTER_IDLE_SECONDS = 5.0


def _trust_recently_used_connections() -> None:
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and now - getattr(conn, "chat_last_ok", -1e9) < HEALTH_CHECK_AFTER_IDLE_SECONDS:
            conn.health_check_done = True  # type: ignore[attr-defined]


def _mark_connections_used() -> None:
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.errors_occurred:
            conn.chat_last_ok = now  # type: ignore[attr-defined]


# db_call's wrapper of each plain function, made once: call sites write
# ``await db_call(services.x)(...)`` per frame, and building asgiref's wrappers each time cost
# more CPU than the call's own hop to the thread (a reconnect storm's resumes, in the profile).
_wrappers: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {}


def db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``func`` in the thread pool with Django's connection handling (old connections are
    closed around it). Not thread-sensitive: channels' default runs every database call of the
    process on one shared thread, which would queue all sockets behind the slowest query (or
    behind a Firestore call stuck on a timeout)."""
    if isinstance(func, types.FunctionType):
        wrapper = _wrappers.get(func)
        if wrapper is None:
            wrapper = _wrappers[func] = _make_db_call(func)
        return wrapper
    return _make_db_call(func)


def _make_db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:

    def in_thread(*args: Any, **kwargs: Any) -> tuple[bool, Any, list[Callable[[], Awaitable[None]]]]:
        work: list[Callable[[], Awaitable[None]]] = []
        token = _loop_work.set(work)
        _trust_recently_used_connections()
        try:
            result = func(*args, **kwargs)
            _mark_connections_used()
            return True, result, work  # noqa: TRY300
        except Exception as exc:  # noqa: BLE001
            return False, exc, work
        finally:
            _loop_work.reset(token)

    default: Any = None
    own: tuple[ThreadPoolExecutor | None, Any] = (None, None)

    def wrapped_for(executor: ThreadPoolExecutor | None) -> Any:
        nonlocal own, default
        if executor is None:
            if default is None:
                default = database_sync_to_async(in_thread, thread_sensitive=False)
            return default
        if own[0] is not executor:
            own = (executor, database_sync_to_async(in_thread, thread_sensitive=False, executor=executor))
        return own[1]

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        global _in_flight
        wrapped = wrapped_for(_executor)
        _in_flight += 1
        try:
            ok, value, work = await wrapped(*args, **kwargs)
        finally:
            _in_flight -= 1
        for factory in work:
            await factory()
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

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
