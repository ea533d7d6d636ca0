"""Helpers for in-process WebSocket tests with channels' WebsocketCommunicator."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from chatproject.asgi import application


def _token(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


async def token_for(user) -> str:
    return await database_sync_to_async(_token)(user)


class Client:
    """A connected socket that keeps frames it did not ask for yet."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.c = communicator
        self.hello: dict[str, Any] = {}
        self.backlog: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.c.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 3) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        # receive_output() cancels the application on a timeout; wait without that first.
        if await self.c.receive_nothing(timeout, interval=0.01):
            raise TimeoutError("no frame")
        out = await self.c.receive_output(1)
        if out["type"] == "websocket.close":
            return {"type": "__closed__", "code": out.get("code")}
        return json.loads(out["text"])

    async def next(self, timeout: float = 3, skip: tuple[str, ...] = ("presence",)) -> dict[str, Any]:
        """The next frame that is not of a skipped type (those are dropped)."""
        while True:
            frame = await self.recv(timeout)
            if frame.get("type") not in skip:
                return frame

    async def expect(self, pred, timeout: float = 3) -> dict[str, Any]:
        """The first frame matching pred; others are kept for later."""
        kept = []
        try:
            while True:
                frame = await self.recv(timeout)
                if pred(frame):
                    return frame
                kept.append(frame)
        finally:
            self.backlog = kept + self.backlog

    async def expect_type(self, frame_type: str, timeout: float = 3) -> dict[str, Any]:
        return await self.expect(lambda f: f.get("type") == frame_type, timeout)

    async def request(self, frame: dict[str, Any], timeout: float = 3) -> dict[str, Any]:
        await self.send(frame)
        rid = frame["id"]
        return await self.expect(lambda f: f.get("id") == rid and f["type"] in ("ack", "error", "pong"), timeout)

    async def nothing(self, timeout: float = 0.3, ignore: tuple[str, ...] = ("presence",)) -> bool:
        """True when no frame (other than the ignored types) arrives within ``timeout``."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = [f for f in self.backlog if f.get("type") not in ignore]
        while not seen and (remaining := deadline - loop.time()) > 0:
            try:
                frame = await self.recv(remaining)
            except TimeoutError:
                break
            self.backlog.append(frame)
            if frame.get("type") not in ignore:
                seen.append(frame)
        return not seen

    async def close(self) -> None:
        await self.c.disconnect()


async def connect(user=None, *, headers: list[tuple[bytes, bytes]] | None = None, path: str = "/ws/chat/") -> Client:
    hdrs = list(headers or [])
    if user is not None:
        hdrs.append((b"authorization", f"Token {await token_for(user)}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=hdrs)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    client = Client(communicator)
    first = await client.recv(5)
    if first.get("type") == "hello":
        client.hello = first
    else:
        client.backlog.append(first)
    return client
