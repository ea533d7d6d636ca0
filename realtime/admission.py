"""Which handshakes an instance takes, and how many sockets do their connect work at once.

A draining instance (SIGTERM received) refuses every new handshake with HTTP 503 and
``Retry-After``, so a load balancer with ``proxy_next_upstream http_503`` hands it to another
instance at once. So does an instance over its admission limits: more than
``WS_MAX_CONNECTS_PER_SECOND`` handshakes in a second (a token bucket holding one second's
worth, so a burst of that size passes) or ``WS_MAX_SOCKETS`` sockets open. While it sheds (and
for ``SHEDDING_REPORT_SECONDS`` after) ``/api/health`` reports it ``degraded``.

Servers without the ASGI ``websocket.http.response`` extension (daphne) get the next best
thing: accepted and closed with 1012 at once, which clients treat alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from django.conf import settings

from core import metrics
from core.runtime import runtime

from .protocol import CloseCode

logger = logging.getLogger("realtime.admission")

# Sockets doing their connect work (database, subscriptions, registry) at once; the others wait
# for a slot instead of all crawling along on a saturated loop until their Redis and database
# timeouts fire (a reconnect storm).
CONNECT_CONCURRENCY = 64
# How long health says "degraded" after the last refused handshake.
SHEDDING_REPORT_SECONDS = 5.0

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class Slot:
    """One taken connect slot; ``release`` is idempotent."""

    __slots__ = ("_semaphore", "active")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self.active = True

    def release(self) -> None:
        if self.active:
            self.active = False
            self._semaphore.release()


# The slot the running task holds for its whole handshake (see ConnectSlots.for_handshake).
_held: ContextVar[Slot | None] = ContextVar("connect_slot", default=None)


class ConnectSlots:
    """One semaphore per event loop (tests run one loop per test).

    A handshake holds one slot from authentication to its ``hello`` (``for_handshake``, taken by
    the socket's entry app; the connect work inside reuses it through ``slot``). With a slot per
    step instead, a storm's sockets queued for the second step behind every socket still
    waiting for the first: none got its ``hello`` until nearly all had authenticated."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.size)
        return self._semaphore

    @contextlib.asynccontextmanager
    async def for_handshake(self) -> AsyncIterator[Slot]:
        """Hold a slot for this task until ``release_held`` (the hello) or the block's end."""
        semaphore = self.get()
        await semaphore.acquire()
        slot = Slot(semaphore)
        token = _held.set(slot)
        try:
            yield slot
        finally:
            _held.reset(token)
            slot.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Connect work in a slot: the one this task holds for its handshake, else its own."""
        held = _held.get()
        if held is not None and held.active:
            yield
            return
        async with self.get():
            yield

    def release_held(self) -> None:
        """The handshake's connect work is done (hello sent, or refused): let the next one in."""
        held = _held.get()
        if held is not None:
            held.release()


connect_slots = ConnectSlots(CONNECT_CONCURRENCY)


async def refuse(
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    *,
    status: int,
    code: str,
    retry_after: int,
    detail: str = "This instance is not taking sockets.",
    close_code: int = CloseCode.SHUTDOWN,
) -> None:
    """Refuse a handshake with an HTTP response where the server can, else accept and close
    with ``close_code``."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    metrics.HANDSHAKES_REFUSED.labels(status=str(status)).inc()
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps(
            {
                "status": status,
                "code": code,
                "detail": detail,
                "retry_after": retry_after,
            }
        ).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(retry_after).encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": int(close_code)})


class Limits:
    """The instance's admission state: a token bucket of connects and a count of open sockets."""

    def __init__(self) -> None:
        self.sockets = 0
        self._tokens = 0.0
        self._refilled = 0.0
        self._rate = -1
        self.last_shed = -1e9

    def _bucket(self, now: float) -> float:
        rate = int(settings.WS_MAX_CONNECTS_PER_SECOND)
        if rate != self._rate:  # first use, or the setting changed (tests)
            self._rate, self._tokens, self._refilled = rate, float(rate), now
        self._tokens = min(float(rate), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        return self._tokens

    def admit(self) -> int | None:
        """None when a handshake may go on (it takes a token), else the Retry-After in seconds."""
        now = time.monotonic()
        cap = int(settings.WS_MAX_SOCKETS)
        if cap and self.sockets >= cap:
            return self._shed(now, "sockets", 5)
        if settings.WS_MAX_CONNECTS_PER_SECOND:
            if self._bucket(now) < 1.0:
                return self._shed(now, "rate", 1)
            self._tokens -= 1.0
        return None

    def _shed(self, now: float, reason: str, retry_after: int) -> int:
        if now - self.last_shed > SHEDDING_REPORT_SECONDS:
            logger.warning("shedding handshakes", extra={"reason": reason, "sockets": self.sockets})
        self.last_shed = now
        return retry_after

    def shedding(self) -> bool:
        return time.monotonic() - self.last_shed < SHEDDING_REPORT_SECONDS


limits = Limits()


class AdmissionGate:
    """ASGI middleware in front of the WebSocket stack: refuses handshakes while draining, while
    the watchdog finds this instance's fan-out path lost (a balancer then tries another instance
    in the same request, instead of every client bouncing off this one with 1011), and above the
    admission limits; it counts the sockets it let through while they live."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if runtime.draining:
            await refuse(scope, receive, send, status=503, code="unavailable", retry_after=1)
            return
        from .router import router

        if not router.healthy:
            await refuse(
                scope,
                receive,
                send,
                status=503,
                code="unavailable",
                retry_after=2,
                detail="This instance lost its fan-out path.",
                close_code=CloseCode.FANOUT_LOST,
            )
            return
        retry_after = limits.admit()
        if retry_after is not None:
            await refuse(scope, receive, send, status=503, code="unavailable", retry_after=retry_after)
            return
        limits.sockets += 1
        try:
            await self.app(scope, receive, send)
        finally:
            limits.sockets -= 1
