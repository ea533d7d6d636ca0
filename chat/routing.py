"""The WebSocket routes, and the one ASGI app in front of them.

``WebSocketEntry`` runs the origin check, authentication and the route match one after another,
each finished before the consumer starts, and hands the consumer the server's own scope: no
middleware coroutine, router frame or copy of the scope stays alive for as long as each socket
is open (channels' nested middleware and ``URLRouter`` keep all of them per socket).
"""

from __future__ import annotations

import json
from typing import Any

from django.urls import path
from django.urls.exceptions import Resolver404

from realtime.admission import connect_slots
from realtime.protocol import CloseCode

from .auth import OptionalOriginValidator, WebSocketAuthMiddleware
from .consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),  # type: ignore[arg-type]  # an ASGI app, as channels routes it
]


class WebSocketEntry:
    def __init__(self, routes: list[Any]) -> None:
        self.routes = routes
        self.origin = OptionalOriginValidator(None)
        self.auth = WebSocketAuthMiddleware(None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # One connect slot from authentication to the hello (realtime/admission.py); the
        # consumer lets it go once its connect work is done.
        async with connect_slots.for_handshake():
            if not await self.origin.check(scope, receive, send):
                return
            if not await self.auth.check(scope, receive, send):
                return
            app = self.route(scope)
            if app is None:
                await not_found(scope, receive, send)
                return
            consumer = app.consumer_class(**app.consumer_initkwargs)
            await consumer(scope, receive, send)

    def route(self, scope: dict[str, Any]) -> Any:
        """The consumer app of the first route matching the scope's path, as ``URLRouter``
        matches it (below ``root_path``, without the leading slash), or None; its arguments go
        into the scope in place."""
        full = scope.get("path") or ""
        root_path = scope.get("root_path", "")
        if root_path and not full.startswith(root_path):
            return None
        remaining = full[len(root_path) :].lstrip("/")
        for route in self.routes:
            try:
                match = route.pattern.match(remaining)
            except Resolver404:
                continue
            if match:
                _new_path, args, kwargs = match
                kwargs.update(route.default_args)
                if args or kwargs:
                    scope["url_route"] = {"args": args, "kwargs": kwargs}
                return route.callback
        return None


async def not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A handshake on a path with no socket: HTTP 404 with the contract's error body where the
    server can answer a handshake with a response (uvicorn), else a close before accepting it
    (daphne answers 403). Never a 500."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"status": 404, "code": "not_found", "detail": "No socket at this path."}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": 404, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": int(CloseCode.POLICY)})
