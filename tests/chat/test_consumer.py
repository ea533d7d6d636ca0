"""The WebSocket protocol, frame by frame, with channels' WebsocketCommunicator (in process,
real Redis channel layer and real PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat import services
from chat.models import Message
from chatproject.asgi import application
from tests.chat.wsutil import connect
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def trio():
    alice, bob, eve = await database_sync_to_async(lambda: [UserFactory() for _ in range(3)])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    return alice, bob, eve, conv


async def _raw_connect(path="/ws/chat/", headers=None):
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def test_hello_carries_connection_and_instance_ids(trio, settings):
    alice, *_ = trio
    client = await connect(alice)
    hello = client.hello
    assert hello["type"] == "hello"
    assert len(hello["connection_id"]) == 36
    assert hello["instance_id"] == settings.INSTANCE_ID
    assert hello["user"] == {"id": alice.pk, "username": alice.username}
    assert hello["heartbeat_interval"] == settings.WS_HEARTBEAT_INTERVAL_SECONDS
    assert hello["reconnect_window_ms"] == settings.WS_RECONNECT_WINDOW_MS == 10000
    other = await connect(alice)
    assert other.hello["connection_id"] != hello["connection_id"]
    await client.close()
    await other.close()


async def test_no_credentials_closes_4401(db):
    communicator, connected, _ = await _raw_connect()
    assert connected
    out = await communicator.receive_output(3)
    assert out == {"type": "websocket.close", "code": 4401}


async def test_bad_token_closes_4401(db):
    communicator, _connected, _ = await _raw_connect(headers=[(b"authorization", b"Token not-a-real-token")])
    assert (await communicator.receive_output(3))["code"] == 4401


async def test_deactivated_user_closes_4403(trio):
    alice, *_ = trio
    alice.is_active = False
    await database_sync_to_async(alice.save)()
    communicator, _connected, _ = await _raw_connect(
        headers=[(b"authorization", f"Token {await database_sync_to_async(_token)(alice)}".encode())]
    )
    assert (await communicator.receive_output(3))["code"] == 4403


def _token(user):
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=user)[0].key


async def test_ticket_is_single_use(trio):
    alice, *_ = trio
    ticket = await database_sync_to_async(services.ws_ticket_issue)(user_id=alice.pk)
    client_comm, _connected, _ = await _raw_connect(path=f"/ws/chat/?ticket={ticket}")
    hello = json.loads((await client_comm.receive_output(3))["text"])
    assert hello["type"] == "hello" and hello["user"]["id"] == alice.pk
    again, _, _ = await _raw_connect(path=f"/ws/chat/?ticket={ticket}")
    assert (await again.receive_output(3))["code"] == 4401
    await client_comm.disconnect()


async def test_foreign_origin_is_refused_at_handshake(trio):
    alice, *_ = trio
    headers = [
        (b"origin", b"https://evil.example"),
        (b"authorization", f"Token {await database_sync_to_async(_token)(alice)}".encode()),
    ]
    _, connected, _ = await _raw_connect(headers=headers)
    # Closed before accept: the ASGI server answers the handshake with HTTP 403 (checked
    # against real servers in tests/integration).
    assert not connected


async def test_session_cookie_needs_allowed_origin(trio, settings):
    alice, *_ = trio
    from django.test import Client as DjangoClient

    def login():
        c = DjangoClient()
        c.force_login(alice)
        return c.cookies[settings.SESSION_COOKIE_NAME].value

    session = await database_sync_to_async(login)()
    cookie = (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())
    no_origin, _, _ = await _raw_connect(headers=[cookie])
    assert (await no_origin.receive_output(3))["code"] == 4401
    good, connected, _ = await _raw_connect(
        headers=[cookie, (b"host", b"localhost:8000"), (b"origin", b"http://localhost:8000")]
    )
    assert connected
    assert json.loads((await good.receive_output(3))["text"])["type"] == "hello"
    await good.disconnect()


async def test_message_send_acks_and_reaches_every_participant_socket(trio):
    alice, bob, _, conv = trio
    a1, a2, b = await connect(alice), await connect(alice), await connect(bob)
    ack = await a1.request(
        {"type": "message.send", "id": "m1", "conversation_id": str(conv.id), "body": "hi", "client_msg_id": "c1"}
    )
    assert ack["type"] == "ack"
    assert ack["message"]["seq"] == 1 and ack["message"]["body"] == "hi"
    assert ack["message"]["client_msg_id"] == "c1"
    for client in (a1, a2, b):
        frame = await client.expect_type("message.new")
        assert frame["message"] == ack["message"]
    assert await database_sync_to_async(Message.objects.filter(conversation=conv).count)() == 1
    for client in (a1, a2, b):
        await client.close()


async def test_idempotent_send_is_broadcast_once(trio, monkeypatch):
    """Once on the bus, not only once on the socket (the router's seq filter would hide a
    second publish of the same message from the receiver)."""
    from realtime.bus import ChannelLayerBus

    published: list[dict] = []
    original = ChannelLayerBus.publish

    async def recording(self, groups, message):
        published.append(message)
        await original(self, groups, message)

    monkeypatch.setattr(ChannelLayerBus, "publish", recording)
    alice, bob, _, conv = trio
    a, b = await connect(alice), await connect(bob)
    frame = {"type": "message.send", "conversation_id": str(conv.id), "body": "once", "client_msg_id": "dup"}
    first = await a.request({**frame, "id": "1"})
    second = await a.request({**frame, "id": "2"})
    assert second["message"]["id"] == first["message"]["id"]
    assert second["repeat"] is True
    await b.expect_type("message.new")
    assert await b.nothing(0.5), b.backlog
    assert [m["frame"]["message"]["id"] for m in published if (m["frame"] or {}).get("type") == "message.new"] == [
        first["message"]["id"]
    ]
    await a.close()
    await b.close()


async def test_non_participant_and_unknown_conversation(trio):
    _, _, eve, conv = trio
    e = await connect(eve)
    err = await e.request({"type": "message.send", "id": "x", "conversation_id": str(conv.id), "body": "hi"})
    assert (err["type"], err["status"], err["code"]) == ("error", 403, "not_participant")
    err = await e.request(
        {"type": "message.send", "id": "y", "conversation_id": "00000000-0000-0000-0000-000000000000", "body": "x"}
    )
    assert (err["status"], err["code"]) == (404, "not_found")
    err = await e.request({"type": "message.send", "id": "z", "conversation_id": "garbage", "body": "x"})
    assert err["status"] == 404
    await e.close()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_request"),
        ("[1,2]", "bad_request"),
        (json.dumps({"type": "no.such.type", "id": "q"}), "invalid"),
        (json.dumps({"id": "q"}), "invalid"),
        (json.dumps({"type": "message.send", "id": "q", "body": "no conversation"}), "invalid"),
        (json.dumps({"type": "ping", "id": 12}), "invalid"),
        (json.dumps({"type": "ping", "id": "x" * 65}), "invalid"),
    ],
)
async def test_bad_frames_get_400_and_socket_stays_open(trio, raw, code):
    alice, *_ = trio
    a = await connect(alice)
    await a.send(raw)
    err = await a.expect_type("error")
    assert err["status"] == 400 and err["code"] == code
    assert "errors" in err
    pong = await a.request({"type": "ping", "id": "alive"})
    assert pong["type"] == "pong"
    await a.close()


async def test_body_over_limit_is_400(trio, settings):
    settings.MESSAGE_MAX_CHARS = 10
    alice, _, _, conv = trio
    a = await connect(alice)
    err = await a.request({"type": "message.send", "id": "m", "conversation_id": str(conv.id), "body": "x" * 11})
    assert (err["status"], err["code"]) == (400, "invalid")
    assert "body" in err["errors"]
    await a.close()


async def test_frame_over_limit_closes_1009(trio, settings):
    settings.WS_MAX_FRAME_BYTES = 2048
    alice, _, _, conv = trio
    a = await connect(alice)
    await a.send({"type": "message.send", "conversation_id": str(conv.id), "body": "x" * 4000})
    closed = await a.expect_type("__closed__")
    assert closed["code"] == 1009


async def test_sustained_invalid_frames_close_1008(trio):
    alice, *_ = trio
    a = await connect(alice)
    for _ in range(25):
        await a.send("nope")
    closed = await a.expect_type("__closed__")
    assert closed["code"] == 1008


async def test_rate_limit_is_429_then_1008_when_sustained(trio, settings):
    settings.RATE_LIMIT_PER_SECOND = 0.01
    settings.RATE_LIMIT_BURST = 2
    alice, _, _, conv = trio
    a = await connect(alice)
    frame = {"type": "message.send", "conversation_id": str(conv.id), "body": "spam"}
    assert (await a.request({**frame, "id": "1"}))["type"] == "ack"
    assert (await a.request({**frame, "id": "2"}))["type"] == "ack"
    err = await a.request({**frame, "id": "3"})
    assert (err["status"], err["code"]) == (429, "rate_limited")
    assert err["retry_after"] > 0
    for i in range(25):
        await a.send({**frame, "id": f"s{i}"})
    closed = await a.expect_type("__closed__")
    assert closed["code"] == 1008


async def test_typing_reaches_others_not_sender(trio):
    alice, bob, _, conv = trio
    a, b = await connect(alice), await connect(bob)
    ack = await a.request({"type": "typing", "id": "t", "conversation_id": str(conv.id), "state": "start"})
    assert ack["type"] == "ack"
    frame = await b.expect_type("typing")
    assert frame == {"type": "typing", "conversation_id": str(conv.id), "user_id": alice.pk, "state": "start"}
    assert await a.nothing(0.3)
    err = await a.request({"type": "typing", "id": "t2", "conversation_id": str(conv.id), "state": "dancing"})
    assert err["status"] == 400
    await a.close()
    await b.close()


async def test_typing_start_expires_with_a_stop(trio, settings):
    settings.TYPING_EXPIRY_SECONDS = 0.3
    alice, bob, _, conv = trio
    a, b = await connect(alice), await connect(bob)
    await a.request({"type": "typing", "id": "t", "conversation_id": str(conv.id), "state": "start"})
    assert (await b.expect_type("typing"))["state"] == "start"
    stop = await b.expect_type("typing", timeout=3)
    assert stop["state"] == "stop" and stop["user_id"] == alice.pk
    await a.close()
    await b.close()


async def test_read_is_broadcast_and_monotonic(trio):
    alice, bob, _, conv = trio
    a, b = await connect(alice), await connect(bob)
    for i in range(3):
        await a.request({"type": "message.send", "id": f"m{i}", "conversation_id": str(conv.id), "body": str(i)})
    ack = await b.request({"type": "read", "id": "r", "conversation_id": str(conv.id), "seq": 2})
    assert ack["seq"] == 2
    frame = await a.expect_type("read")
    assert (frame["user_id"], frame["seq"], frame["conversation_id"]) == (bob.pk, 2, str(conv.id))
    assert frame["read_at"]
    lower = await b.request({"type": "read", "id": "r2", "conversation_id": str(conv.id), "seq": 1})
    assert lower["seq"] == 2
    # No second read event: alice gets nothing but her own messages' echoes meanwhile.
    assert await a.nothing(0.3, ignore=("presence", "message.new"))
    err = await b.request({"type": "read", "id": "r3", "conversation_id": str(conv.id), "seq": 99})
    assert err["status"] == 400
    await a.close()
    await b.close()


async def test_resume_sends_missed_messages_in_order_then_ack(trio):
    alice, bob, _, conv = trio
    for i in range(5):
        await database_sync_to_async(services.message_send)(sender_id=alice.pk, conversation_id=conv.id, body=f"m{i}")
    b = await connect(bob)
    await b.send({"type": "resume", "id": "r", "cursors": {str(conv.id): 2}})
    seqs = []
    while True:
        frame = await b.next()
        if frame["type"] == "ack":
            break
        assert frame["type"] == "message.new"
        seqs.append(frame["message"]["seq"])
    assert seqs == [3, 4, 5]
    assert frame["resumed"] == {str(conv.id): 5}
    await b.close()


async def test_resume_truncates_past_the_limit(trio, settings):
    settings.RESUME_MAX_PER_CONVERSATION = 3
    alice, bob, _, conv = trio
    for i in range(5):
        await database_sync_to_async(services.message_send)(sender_id=alice.pk, conversation_id=conv.id, body=f"m{i}")
    b = await connect(bob)
    await b.send({"type": "resume", "id": "r", "cursors": {str(conv.id): 0}})
    frames = [await b.next() for _ in range(5)]
    assert [f["message"]["seq"] for f in frames[:3]] == [1, 2, 3]
    assert frames[3] == {"type": "resume.truncated", "conversation_id": str(conv.id), "next_seq": 4}
    assert frames[4]["type"] == "ack"
    await b.close()


async def test_resume_of_foreign_conversation_is_403(trio):
    _, _, eve, conv = trio
    e = await connect(eve)
    err = await e.request({"type": "resume", "id": "r", "cursors": {str(conv.id): 0}})
    assert (err["status"], err["code"]) == (403, "not_participant")
    err = await e.request({"type": "resume", "id": "r2", "cursors": "nope"})
    assert err["status"] == 400
    await e.close()


async def test_added_participant_receives_at_once_and_removed_stops(trio):
    alice, _bob, eve, conv = trio
    a, e = await connect(alice), await connect(eve)
    await database_sync_to_async(services.participant_add)(actor_id=alice.pk, conversation_id=conv.id, user_id=eve.pk)
    joined = await e.expect_type("conversation.joined")
    assert joined["conversation"]["id"] == str(conv.id)
    await a.request({"type": "message.send", "id": "1", "conversation_id": str(conv.id), "body": "welcome"})
    assert (await e.expect_type("message.new"))["message"]["body"] == "welcome"
    await database_sync_to_async(services.participant_remove)(
        actor_id=alice.pk, conversation_id=conv.id, user_id=eve.pk
    )
    left = await e.expect_type("conversation.left")
    assert left == {"type": "conversation.left", "conversation_id": str(conv.id)}
    await a.request({"type": "message.send", "id": "2", "conversation_id": str(conv.id), "body": "secret"})
    await a.expect_type("message.new")
    assert await e.nothing(0.5)
    err = await e.request({"type": "message.send", "id": "3", "conversation_id": str(conv.id), "body": "x"})
    assert err["code"] == "not_participant"
    await a.close()
    await e.close()


async def test_http_send_is_delivered_like_a_websocket_send(trio):
    alice, bob, _, conv = trio
    b = await connect(bob)
    from tests.conftest import client_for

    def post():
        return client_for(alice).post(f"/api/conversations/{conv.id}/messages/", {"body": "via http"}, format="json")

    response = await database_sync_to_async(post)()
    assert response.status_code == 201
    frame = await b.expect_type("message.new")
    assert frame["message"] == response.json()
    await b.close()


async def test_deactivating_a_user_closes_their_sockets_with_4403(trio):
    alice, *_ = trio
    a = await connect(alice)

    def deactivate():
        alice.is_active = False
        alice.save()

    await database_sync_to_async(deactivate)()
    closed = await a.expect_type("__closed__")
    assert closed["code"] == 4403
