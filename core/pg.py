"""PostgreSQL statements run on the event loop, for the hot paths.

Django's ORM is synchronous: every query made from async code goes to a worker thread and back
(core/db.py). For a message's send that hop, with asgiref's wrappers and the ORM's cursor
layers, cost more of the instance's CPU than the statement itself (a third of a send's CPU, in
``python -m bench.run``'s S1). The statements that run per message, and the tiny ones background
loops run every second, go through here instead: psycopg's async connections, owned by the
runtime's event loop, opened on first use with the ORM's own connection parameters, at most
``POOL_SIZE`` of them, in autocommit (each statement is its own transaction, as with the ORM).

* Errors leave as Django's database exceptions (``django.db.OperationalError`` for a server that
  is down or a connection that broke, ``IntegrityError``...), so callers and the 503 mapping
  (core/errors.py) treat them as they treat the ORM's.
* A connection that broke is closed and the next caller opens a new one. One that sat idle for
  more than ``HEALTH_CHECK_AFTER_IDLE_SECONDS`` is checked with an empty query before use: a
  server that restarted meanwhile is met before the statement, never in the middle of it, so a
  statement is never sent twice.
* A caller cancelled while its statement runs takes the connection down with it (its state is
  unknown); the statement may or may not have committed, as when a client's socket goes away
  before its ack.
* Outside the runtime's loop (a thread, another loop) and on other databases, :func:`available`
  is False and callers use the ORM through ``db_call``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import django.db
import psycopg
from django.db import connections
from psycopg import sql

from .db import HEALTH_CHECK_AFTER_IDLE_SECONDS

logger = logging.getLogger("core.pg")

# Connections per loop. A send holds one for one round trip; sends to one conversation queue on
# its row lock in the database anyway.
POOL_SIZE = 4

_ERRORS = (
    "IntegrityError",
    "DataError",
    "OperationalError",
    "InterfaceError",
    "ProgrammingError",
    "NotSupportedError",
    "InternalError",
    "DatabaseError",
)


def django_error(exc: psycopg.Error) -> django.db.Error:
    """The Django exception of a psycopg error (as Django's own cursor wrapper maps them)."""
    for name in _ERRORS:
        if isinstance(exc, getattr(psycopg, name)):
            return getattr(django.db, name)(*exc.args)  # type: ignore[no-any-return]
    return django.db.Error(*exc.args)


class LoopConnections:
    """The connections of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = POOL_SIZE) -> None:
        self.loop = loop
        self.idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []  # the last used last
        self.busy: set[psycopg.AsyncConnection[Any]] = set()
        self.slots = asyncio.Semaphore(size)
        self.closed = False

    async def fetchone(self, query: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run one statement; its first row (None when it returned none)."""
        return await self._run(query, params, many=False)  # type: ignore[no-any-return]

    async def fetchall(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement; all its rows."""
        return await self._run(query, params, many=True)  # type: ignore[no-any-return]

    async def _run(self, query: str, params: Mapping[str, Any], *, many: bool) -> Any:
        async with self.slots:
            conn = await self._take()
            self.busy.add(conn)
            try:
                cursor = await conn.execute(query, params)
                return await (cursor.fetchall() if many else cursor.fetchone())
            except psycopg.Error as exc:
                raise django_error(exc) from exc
            except BaseException:
                await _close(conn)  # cancelled mid-statement: the connection's state is unknown
                raise
            finally:
                self.busy.discard(conn)
                self._give_back(conn)

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        now = time.monotonic()
        while self.idle:
            conn, used_at = self.idle.pop()
            if conn.closed or conn.broken:
                continue
            if now - used_at < HEALTH_CHECK_AFTER_IDLE_SECONDS:
                return conn
            try:
                await conn.execute("")
            except psycopg.Error:
                await _close(conn)
                continue
            return conn
        try:
            return await _connect()
        except psycopg.Error as exc:
            raise django_error(exc) from exc

    def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.closed or conn.closed or conn.broken:
            if not conn.closed:
                self.loop.create_task(_close(conn))
            return
        self.idle.append((conn, time.monotonic()))

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn, _ in idle:
            await _close(conn)

    def abandon(self) -> None:
        """Close every connection without the loop (the loop is gone or not this thread's)."""
        self.closed = True
        for conn in [c for c, _ in self.idle] + list(self.busy):
            conn.pgconn.finish()
        self.idle = []
        self.busy.clear()


async def _connect() -> psycopg.AsyncConnection[Any]:
    wrapper = connections["default"]
    params = dict(wrapper.get_connection_params())
    for name in ("cursor_factory", "context", "prepare_threshold"):  # the ORM's cursors, not ours
        params.pop(name, None)
    conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
    role = wrapper.settings_dict.get("OPTIONS", {}).get("assume_role")
    if role:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    return conn


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await conn.close()
    except Exception as exc:  # noqa: BLE001 (already broken)
        logger.debug("closing a database connection failed", extra={"error": exc.__class__.__name__})


_pool: LoopConnections | None = None


def open_on(loop: asyncio.AbstractEventLoop) -> None:
    """Statements run on ``loop`` from now on (the runtime, when it starts there)."""
    global _pool
    if _pool is not None and _pool.loop is not loop:
        _pool.abandon()
        _pool = None
    if _pool is None and connections["default"].vendor == "postgresql":
        _pool = LoopConnections(loop)


async def close() -> None:
    """Close the loop's connections (the runtime, when it stops)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        if pool.loop is asyncio.get_running_loop():
            await pool.close()
        else:
            pool.abandon()


def abandon() -> None:
    """Close the connections without awaiting (the runtime moved to another loop)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.abandon()


def available() -> LoopConnections | None:
    """The running loop's connections, or None where the ORM has to be used (another loop, a
    thread, a database other than PostgreSQL)."""
    pool = _pool
    if pool is None:
        return None
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return pool if pool.loop is running else None
