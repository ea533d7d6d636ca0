"""core.db: work deferred from inside a db_call runs on the event loop before the caller
resumes, also when the call raises; outside a db_call nothing is deferred."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from core.db import db_call, defer_to_loop
from tests.pgutil import terminate_backends

# db_call closes the worker thread's old database connection around each call: a thread of the
# process-wide pool may still hold one from an earlier test, which the blocker would refuse.
pytestmark = pytest.mark.django_db


async def test_deferred_work_runs_on_the_loop_before_the_caller_resumes():
    loop_thread = threading.get_ident()
    ran: list[tuple[str, bool]] = []

    async def on_loop(tag: str) -> None:
        ran.append((tag, threading.get_ident() == loop_thread))

    def in_worker() -> str:
        assert threading.get_ident() != loop_thread
        assert defer_to_loop(lambda: on_loop("first"))
        assert defer_to_loop(lambda: on_loop("second"))
        return "result"

    assert await db_call(in_worker)() == "result"
    assert ran == [("first", True), ("second", True)]


async def test_deferred_work_runs_even_when_the_call_raises():
    ran: list[str] = []

    async def on_loop() -> None:
        ran.append("published")

    def fails_after_commit() -> None:
        defer_to_loop(on_loop)
        raise ValueError("after the commit")

    with pytest.raises(ValueError, match="after the commit"):
        await db_call(fails_after_commit)()
    assert ran == ["published"]


async def test_outside_a_db_call_nothing_is_deferred():
    async def never() -> None:
        raise AssertionError("not to be run")

    assert defer_to_loop(never) is False
    assert await asyncio.to_thread(defer_to_loop, never) is False


async def test_calls_hung_on_a_dependency_leave_the_loops_default_executor_free():
    """Once the runtime runs, db_calls have threads of their own: calls all stuck on a cut-off
    Redis do not hold up the loop's default executor, where Django logs every error response
    before sending it (a 503 from /api/health waited behind them)."""
    from core.runtime import runtime

    await runtime.ensure_started()
    release = threading.Event()
    default_executor_threads = min(32, (os.cpu_count() or 1) + 4)
    stuck = [asyncio.ensure_future(db_call(release.wait)(10)) for _ in range(default_executor_threads + 2)]
    try:
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "logged"), 3) == "logged"
    finally:
        release.set()
        await asyncio.gather(*stuck)


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
async def test_calls_recover_after_the_database_dropped_their_connections():
    """Recently used connections skip the per-call health check; one the database dropped in
    between fails its next call once, is closed, and the calls after it work again."""
    from django.db import OperationalError

    pids = {await db_call(_backend_pid)() for _ in range(20)}

    await asyncio.to_thread(terminate_backends, pids)
    failures: list[str] = []
    results = []
    for _ in range(40):
        try:
            results.append(await db_call(_backend_pid)())
        except OperationalError as exc:
            failures.append(str(exc)[:200])
    assert len(failures) <= len(pids), failures[:3]
    assert len(results) == 40 - len(failures)
    assert not set(results[-5:]) & pids, "the dropped connections were replaced"
