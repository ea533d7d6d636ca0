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
