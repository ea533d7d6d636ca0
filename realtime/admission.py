"""Which handshakes an instance takes, and how many sockets do their connect work at once.

A draining instance (SIGTERM received) refuses every new handshake with HTTP 503 and
``Retry-After``, so a load balancer with ``proxy_next_upstream http_503`` hands it to another
instance at once. Servers without the ASGI ``websocket.http.response`` extension (daphne) get
the next best thing: accepted and closed with 1012 at once, which clients treat alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core import metrics
from core.runtime import runtime

from .protocol import CloseCode

logger = logging.getLogger("realtime.admission")

# Sockets doing their connect work (database, subscriptions, registry) at once; the others wait
# for a slot instead of all crawling along on a saturated loop until their Redis and database
# timeouts fire (a reconnect storm).
CONNECT_CONCURRENCY = 64

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class ConnectSlots:
    """One semaphore per event loop (tests run one loop per test)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.size)
        return self._semaphore


connect_slots = ConnectSlots(CONNECT_CONCURRENCY)


async def refuse(
    scope: dict[str, Any], receive: Receive, send: Send, *, status: int, code: str, retry_after: int
) -> None:
    """Refuse a handshake with an HTTP response where the server can, else accept and close."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    metrics.HANDSHAKES_REFUSED.labels(status=str(status)).inc()
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps(
            {
                "status": status,
                "code": code,
                "detail": "This instance is not taking sockets.",
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
    await send({"type": "websocket.close", "code": int(CloseCode.SHUTDOWN)})


class AdmissionGate:
    """ASGI middleware in front of the WebSocket stack: refuses handshakes while draining."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and runtime.draining:
            await refuse(scope, receive, send, status=503, code="unavailable", retry_after=1)
            return
        await self.app(scope, receive, send)
