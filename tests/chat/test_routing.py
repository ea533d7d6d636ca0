"""The socket's entry app: origin, authentication and route without a copy of the scope."""

from __future__ import annotations

import gc
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat.consumers import ChatConsumer
from chatproject.asgi import application
from tests.chat.wsutil import token_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_consumer_keeps_the_servers_own_scope():
    alice = await database_sync_to_async(UserFactory)()
    headers = [(b"authorization", f"Token {await token_for(alice)}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    try:
        # type(), not isinstance(): a dead weak proxy among the objects raises on isinstance.
        consumers = [o for o in gc.get_objects() if type(o) is ChatConsumer]
        mine = [c for c in consumers if getattr(c, "user_id", None) == alice.pk]
        assert len(mine) == 1
        # One scope per socket, marked in place by the origin check and authentication.
        assert mine[0].scope is communicator.scope
        assert communicator.scope["user"].pk == alice.pk
        assert communicator.scope["auth_method"] == "token"
    finally:
        await communicator.disconnect()


async def test_an_unknown_path_is_refused_before_it_is_accepted():
    alice = await database_sync_to_async(UserFactory)()
    headers = [(b"authorization", f"Token {await token_for(alice)}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/elsewhere/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    assert (connected, code) == (False, 1008)


async def test_an_unknown_path_gets_a_404_where_the_server_can_answer_a_handshake():
    alice = await database_sync_to_async(UserFactory)()
    headers = [(b"authorization", f"Token {await token_for(alice)}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/elsewhere/", headers=headers)
    communicator.scope["extensions"] = {"websocket.http.response": {}}
    await communicator.send_input({"type": "websocket.connect"})
    start = await communicator.receive_output(timeout=5)
    body = await communicator.receive_output(timeout=5)
    assert start["type"] == "websocket.http.response.start" and start["status"] == 404
    assert json.loads(body["body"])["code"] == "not_found"


async def test_every_handshake_gives_its_connect_slot_back_connected_or_refused(settings):
    """A socket holds a connect slot from authentication to its hello; one refused by a cap
    (or before it) gives it back at once, not when its close completes."""
    from realtime.admission import connect_slots

    settings.WS_MAX_SOCKETS_PER_USER = 1
    alice = await database_sync_to_async(UserFactory)()
    headers = [(b"authorization", f"Token {await token_for(alice)}".encode())]
    first = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    assert (await first.connect(timeout=5))[0]
    await first.receive_json_from(timeout=5)  # hello
    free = connect_slots.get()._value
    assert free == connect_slots.size
    second = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await second.connect(timeout=5)
    assert connected  # accepted, then closed with 4429
    assert (await second.receive_output(timeout=5))["code"] == 4429
    assert connect_slots.get()._value == connect_slots.size  # before the close completes
    unknown = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", b"Token nope")])
    await unknown.connect(timeout=5)
    assert connect_slots.get()._value == connect_slots.size
    for communicator in (first, second, unknown):
        await communicator.disconnect()
