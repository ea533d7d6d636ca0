"""One frame, framed once: the WebSocket bytes of a text frame written to every local socket.

A server's frames are not masked, so the bytes of a text frame (header and UTF-8 payload) are
the same for every socket that did not negotiate an extension. The fan-out hands the same
encoded text to each of its sockets in a row; the bytes are built for the first and reused for
the others (a one-entry cache keyed by the text object itself), and written straight to the
socket's transport. That skips, per socket and frame, the ASGI send's coroutine, its event
dict, the UTF-8 encoding, the frame object and its serialisation: the largest part of the CPU
per delivery beyond the transport's own write (the prepared messages of gorilla/websocket and
uWebSockets do the same).

Only where the server lets it be done safely: uvicorn's sans-I/O WebSocket protocol (the
shipped server), a socket without extensions (permessage-deflate compresses per socket), open,
handshake done, no close sent or received and the transport taking writes (not paused). In
every other case, and on other servers, frames go through the ASGI send as before.
"""

from __future__ import annotations

import struct
from typing import Any

try:  # the server the project ships with; another server just has no direct path
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State

    OPEN: Any = State.OPEN
except ImportError:  # pragma: no cover
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]
    OPEN = None

_PROTOCOL_ATTRIBUTES = ("close_sent", "disconnected", "conn", "writable", "transport")
_prepared_text: str | None = None
_prepared_frame = b""


def direct_protocol(send: Any) -> Any:
    """The server protocol behind an ASGI ``send`` when frames can be written to its transport
    directly, else None."""
    proto = getattr(send, "__self__", None)
    if WebSocketsSansIOProtocol is None or not isinstance(proto, WebSocketsSansIOProtocol):
        return None
    # What can_write and the write read; a uvicorn that renamed any of it gets the ASGI send.
    if not all(hasattr(proto, name) for name in _PROTOCOL_ATTRIBUTES) or not hasattr(proto.conn, "state"):
        return None
    if getattr(proto.conn, "extensions", None):  # negotiated permessage-deflate: per socket
        return None
    return proto


def can_write(proto: Any) -> bool:
    """Open (the session exists only once the handshake is accepted), no close sent or
    received, and not paused by the transport's flow control (then the ASGI send waits for it,
    in the socket's writer, and the frames after it queue behind)."""
    return not proto.close_sent and not proto.disconnected and proto.conn.state is OPEN and proto.writable.is_set()


def text_frame(text: str) -> bytes:
    """The unmasked, unfragmented WebSocket text frame carrying ``text`` (RFC 6455 5.2)."""
    global _prepared_text, _prepared_frame
    if text is _prepared_text:
        return _prepared_frame
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    # The reference keeps the text alive, so no other string can take its identity meanwhile.
    _prepared_text, _prepared_frame = text, head + payload
    return _prepared_frame
