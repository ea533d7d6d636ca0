"""Statements on the event loop (core/pg.py), against the real PostgreSQL of the test database."""

from __future__ import annotations

import asyncio

import django.db
import pytest

from core import pg
from core.errors import dependency_fault
from tests.pgutil import terminate_backends

pytestmark = pytest.mark.django_db(transaction=True)

PID = "SELECT pg_backend_pid()"


@pytest.fixture
async def statements():
    pg.open_on(asyncio.get_running_loop())
    pool = pg.available()
    assert pool is not None
    yield pool
    await pg.close()


async def test_only_the_loop_it_was_opened_on_has_statements(statements):
    assert pg.available() is statements
    assert await asyncio.to_thread(pg.available) is None  # a worker thread uses the ORM

    def other_loop() -> object:
        async def ask() -> object:
            return pg.available()

        return asyncio.run(ask())

    assert await asyncio.to_thread(other_loop) is None


async def test_errors_leave_as_djangos_and_a_fault_is_a_503(statements):
    with pytest.raises(django.db.DataError):
        await statements.fetchone("SELECT 1 / 0", {})
    with pytest.raises(django.db.ProgrammingError):
        await statements.fetchone("SELECT * FROM no_such_table", {})
    # The connection survived both (a statement error is not a broken connection).
    assert len(statements.idle) == 1
    assert (await statements.fetchone("SELECT %(n)s::int + 1", {"n": 41})) == (42,)


async def test_a_dropped_connection_fails_once_and_is_replaced(statements):
    (pid,) = await statements.fetchone(PID, {})
    await asyncio.to_thread(terminate_backends, {pid})
    with pytest.raises(django.db.OperationalError) as raised:
        await statements.fetchone(PID, {})
    assert dependency_fault(raised.value) is not None  # answered 503, never 500
    (new_pid,) = await statements.fetchone(PID, {})
    assert new_pid != pid


async def test_a_connection_idle_past_the_check_is_checked_before_the_statement(statements, monkeypatch):
    """A server that dropped an idle connection is met by the empty check query, not by the
    statement: the caller never sees the error and the statement is sent once."""
    (pid,) = await statements.fetchone(PID, {})
    await asyncio.to_thread(terminate_backends, {pid})
    monkeypatch.setattr(pg, "HEALTH_CHECK_AFTER_IDLE_SECONDS", 0.0)
    (new_pid,) = await statements.fetchone(PID, {})
    assert new_pid != pid


async def test_a_cancelled_statement_takes_its_connection_down(statements):
    task = asyncio.ensure_future(statements.fetchone("SELECT pg_sleep(5)", {}))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not statements.idle and not statements.busy
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await statements.fetchone("SELECT 1", {})) == (1,)
    assert loop.time() - started < 4, "the next statement must not wait behind the cancelled one"


async def test_at_most_pool_size_connections_at_once(statements):
    pids = await asyncio.gather(
        *[statements.fetchone("SELECT pg_backend_pid(), pg_sleep(0.05)", {}) for _ in range(20)]
    )
    assert len({pid for pid, _ in pids}) <= pg.POOL_SIZE
    assert len(statements.idle) <= pg.POOL_SIZE


async def test_close_closes_every_connection(statements):
    await asyncio.gather(*[statements.fetchone("SELECT pg_sleep(0.05)", {}) for _ in range(3)])
    conns = [conn for conn, _ in statements.idle]
    assert conns
    await pg.close()
    assert all(conn.closed for conn in conns)
    assert pg.available() is None
