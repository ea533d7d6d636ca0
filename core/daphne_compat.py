"""Make daphne behave as the protocol needs, as uvicorn does without help.

- **Server close codes.** Autobahn (under daphne) accepts only 1000 and 3000-4999 from an
  application's close, but RFC 6455 defines 1008, 1009, 1011 and 1012 for servers, and the chat
  protocol uses them (policy, too big, fan-out lost, shutting down). Those codes are written as a
  plain close frame.
- **Frame size.** ``WS_MAX_FRAME_BYTES`` is daphne's incoming frame limit too (no daphne flag
  needed), and a frame or message over autobahn's limits is closed with 1009 instead of the
  dropped TCP connection (1006) autobahn's ``failByDrop`` gives: a client must learn that it sent
  too much, not reconnect and send it again.
- **Write backpressure.** Daphne's ``send`` returns at once, and Twisted buffers without bound,
  so a client that stops reading would grow this process's memory and never overflow the
  session's queue (4008). The socket's transport gets a push producer that records when its
  write buffer is over Twisted's high-water mark; ``send`` then waits until the buffer has been
  written out (or the connection is gone), exactly like uvicorn's ``send`` awaiting a drain.
"""

from __future__ import annotations

import asyncio
from typing import Any

SERVER_CODES = {1001, 1008, 1009, 1011, 1012, 1013}
TOO_BIG = 1009
CLOSE_HANDSHAKE_SECONDS = 5.0


class WriteBackpressure:
    """The transport's push producer for one socket: forwards to the producer it stands in for
    (daphne's HTTP channel, which stops reading while the peer does not read) and wakes the
    sends waiting for the write buffer to drain."""

    __slots__ = ("inner", "waiters")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.waiters: list[asyncio.Future[None]] = []

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's IPushProducer)
        if self.inner is not None:
            self.inner.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.inner is not None:
            self.inner.resumeProducing()
        self.wake()

    def stopProducing(self) -> None:  # noqa: N802
        try:
            if self.inner is not None:
                self.inner.stopProducing()
        finally:
            self.wake()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def writable(self, transport: Any) -> None:
        """Return once the transport's write buffer is below its mark, or it is gone."""
        while transport is not None and transport.connected and transport.producerPaused:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter


def install_backpressure(protocol: Any) -> None:
    """Stand in as the producer of ``protocol``'s transport (a Twisted TCP connection); other
    transports (TLS wrappers) keep daphne's behaviour."""
    transport = protocol.transport
    if not all(hasattr(transport, name) for name in ("producer", "producerPaused", "streamingProducer", "connected")):
        return
    inner = transport.producer
    if inner is not None and not transport.streamingProducer:
        return
    backpressure = WriteBackpressure(inner)
    if inner is None:
        transport.registerProducer(backpressure, True)
    else:
        transport.producer = backpressure
    protocol._chat_backpressure = backpressure


def frame_limit() -> int:
    from django.conf import settings

    return int(settings.WS_MAX_FRAME_BYTES)


def patch_daphne() -> None:
    try:
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # daphne not installed: uvicorn only
        return
    if getattr(WebSocketProtocol, "_chat_patched", False):
        return
    original_close = WebSocketProtocol.serverClose
    original_connection_made = WebSocketProtocol.connectionMade
    original_handle_reply = Server.handle_reply

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            original_close(self, code)

    def connection_made(self: Any) -> None:
        original_connection_made(self)  # copies the factory's options onto the protocol
        limit = frame_limit()
        self.maxFramePayloadSize = limit if self.maxFramePayloadSize <= 0 else min(self.maxFramePayloadSize, limit)
        if 0 < self.maxMessagePayloadSize < limit:  # never refuse a message the limit allows
            self.maxMessagePayloadSize = limit
        # A close frame queued behind what a slow reader has still to read (a 4008 close) needs
        # more than autobahn's 1 s to be answered before the connection is dropped.
        self.closeHandshakeTimeout = max(self.closeHandshakeTimeout, CLOSE_HANDSHAKE_SECONDS)
        install_backpressure(self)

    def too_big(self: Any, msg_size: int, max_msg_size: int, reason: str) -> None:
        # A close frame (then autobahn's close-handshake timeout), not a dropped connection. The
        # rest of the frame is read and discarded, never buffered.
        self.failByDrop = False
        self._fail_connection(TOO_BIG, "message too big")

    async def handle_reply(self: Any, protocol: Any, message: dict[str, Any]) -> None:
        await original_handle_reply(self, protocol, message)
        backpressure = getattr(protocol, "_chat_backpressure", None)
        if backpressure is not None and message.get("type") == "websocket.send":
            await backpressure.writable(protocol.transport)

    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol.connectionMade = connection_made
    WebSocketProtocol._max_message_size_exceeded = too_big
    Server.handle_reply = handle_reply
    WebSocketProtocol._chat_patched = True
