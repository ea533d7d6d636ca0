"""Let daphne send the server close codes of the protocol.

Autobahn (under daphne) accepts only 1000 and 3000-4999 from an application's close, but RFC
6455 defines 1008, 1009, 1011 and 1012 for servers, and the chat protocol uses them (policy,
too big, fan-out lost, shutting down). Those codes are written as a plain close frame.
"""

from __future__ import annotations

from typing import Any

SERVER_CODES = {1001, 1008, 1009, 1011, 1012, 1013}


def patch_daphne() -> None:
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # daphne not installed: uvicorn only
        return
    if getattr(WebSocketProtocol, "_chat_close_codes", False):
        return
    original = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            original(self, code)

    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol._chat_close_codes = True
