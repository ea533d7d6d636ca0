"""What the socket does when the server itself fails: a write the server cannot make closes the
socket and takes it out of the registry at once (never open and deaf), and a handler that fails
with every frame is a strike like an invalid frame, logged once, not once per frame.

In process (channels' WebsocketCommunicator, real Redis and PostgreSQL): the server's send is
wrapped to encode text frames as UTF-8 strictly, exactly the step at which uvicorn's send fails.
"""

from __future__ import annotations

import json
import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chatproject.asgi import application
from core import validation
from realtime.registry import get_registry
from tests.chat.wsutil import token_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def strict_sends(app):
    async def wrapped(scope, receive, send):
        async def server_send(message):
            if message["type"] == "websocket.send" and message.get("text") is not None:
                message["text"].encode("utf-8")  # what a server does before writing the frame
            await send(message)

        await app(scope, receive, server_send)

    return wrapped


async def connect(user, app=application) -> WebsocketCommunicator:
    token = await token_for(user)
    communicator = WebsocketCommunicator(app, "/ws/chat/", headers=[(b"authorization", f"Token {token}".encode())])
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    hello = json.loads((await communicator.receive_output(5))["text"])
    assert hello["type"] == "hello"
    return communicator


async def registered(user_id: int) -> int:
    return int(await get_registry().user_connection_count(user_id))


async def wait_registered(user_id: int, count: int) -> None:
    import asyncio

    for _ in range(100):
        if await registered(user_id) == count:
            return
        await asyncio.sleep(0.05)
    assert await registered(user_id) == count


async def test_a_write_the_server_cannot_make_closes_the_socket_and_leaves_the_registry(monkeypatch):
    user = await database_sync_to_async(UserFactory)()
    ws = await connect(user, strict_sends(application))
    await wait_registered(user.pk, 1)
    # A frame whose echo cannot be encoded, on a path that does not validate its input: the
    # write must fail closed whatever lets such text through.
    monkeypatch.setattr(validation, "check_text", lambda value, field: value)
    monkeypatch.setattr(validation, "check_document", lambda text, data: None)
    await ws.send_to(text_data='{"type":"ping","id":"\\ud83d"}')
    out = await ws.receive_output(5)
    assert out == {"type": "websocket.close", "code": 1011}
    await wait_registered(user.pk, 0)
    await ws.disconnect()


async def test_a_failing_handler_is_a_strike_and_its_traceback_is_logged_once(monkeypatch, settings, caplog):
    from presence import consumers as presence_consumers
    from realtime import consumer as realtime_consumer

    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "presence_sync": (1000.0, 1000)}

    def broken(**kwargs):
        raise RuntimeError("snapshot failed")

    monkeypatch.setattr(presence_consumers.selectors, "presence_snapshot", broken)
    user = await database_sync_to_async(UserFactory)()
    ws = await connect(user)
    caplog.set_level(logging.ERROR, logger="realtime.ws")
    errors, closed = 0, None
    for i in range(realtime_consumer.ABUSE_MAX_STRIKES + 5):
        await ws.send_to(text_data=json.dumps({"type": "presence.sync", "id": str(i)}))
    while closed is None:
        out = await ws.receive_output(5)
        if out["type"] == "websocket.close":
            closed = out["code"]
            break
        frame = json.loads(out["text"])
        if frame["type"] == "error":
            assert (frame["status"], frame["code"]) == (500, "internal_error")
            assert "snapshot failed" not in out["text"]
            errors += 1
    assert closed == 1008
    assert errors == realtime_consumer.ABUSE_MAX_STRIKES
    tracebacks = [r for r in caplog.records if r.getMessage() == "frame handler failed"]
    assert len(tracebacks) == 1
    await ws.disconnect()
