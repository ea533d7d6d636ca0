"""Every frame the server sends matches its JSON Schema (the Zulip ``test_events`` idea): a
scenario drives each frame type through real sockets, every frame any session writes is
recorded and checked, and a frame type without a schema, or a schema no frame exercised, fails.
Adding a frame type means adding its schema, and this test tells you when you forgot."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient

from chat import schemas as chat_schemas
from chat import services
from presence import schemas as presence_schemas
from realtime import protocol
from realtime.protocol import CloseCode, encode
from realtime.session import Session
from tests.chat.wsutil import connect
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

ACKS = {**chat_schemas.ACKS, **presence_schemas.ACKS}


@pytest.fixture
def recorded(monkeypatch) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    original = Session.push

    def push(self: Session, text: str, frame_type: str) -> None:
        frames.append(json.loads(text))
        original(self, text, frame_type)

    monkeypatch.setattr(Session, "push", push)
    return frames


def check(frame: dict[str, Any]) -> None:
    schema = protocol.SERVER_FRAMES.get(frame["type"])
    assert schema is not None, f"no schema for server frame {frame['type']!r}"
    jsonschema.validate(frame, schema)
    if frame["type"] == "ack":
        body = {k: v for k, v in frame.items() if k not in ("type", "id")}
        jsonschema.validate(body, ACKS[frame["id"]])


async def test_every_server_frame_matches_its_schema(recorded, settings):
    settings.RESUME_MAX_PER_CONVERSATION = 2
    settings.TYPING_EXPIRY_SECONDS = 0.2
    alice, bob, carol = await database_sync_to_async(lambda: [UserFactory() for _ in range(3)])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    cid = str(conv.id)
    a, b = await connect(alice), await connect(bob)
    try:
        for n in range(3):
            ack = await a.request(
                {"type": "message.send", "id": "message.send", "conversation_id": cid, "body": f"m{n}"}
            )
            assert ack["type"] == "ack"
        await b.expect(lambda f: f.get("type") == "message.new" and f["message"]["seq"] == 3)
        assert (await a.request({"type": "typing", "id": "typing", "conversation_id": cid, "state": "start"}))[
            "broadcast"
        ]
        await b.expect(lambda f: f.get("type") == "typing" and f["state"] == "start")
        await b.expect(lambda f: f.get("type") == "typing" and f["state"] == "stop", timeout=3)  # the expiry
        await a.request({"type": "read", "id": "read", "conversation_id": cid, "seq": 2})
        await b.expect_type("read")
        await b.request({"type": "resume", "id": "resume", "cursors": {cid: 0}})  # truncated after 2
        await b.request({"type": "status.set", "id": "status.set", "status": "busy", "text": "deep work"})
        await a.expect(lambda f: f.get("type") == "presence" and f["status"] == "busy")
        await a.request({"type": "presence.sync", "id": "presence.sync"})
        await a.request({"type": "ping", "id": "ping"})
        error = await a.request({"type": "nonsense", "id": "x"})
        assert error["type"] == "error"
        await database_sync_to_async(services.participant_add)(actor_id=alice.pk, conversation_id=cid, user_id=carol.pk)
        await database_sync_to_async(services.participant_remove)(
            actor_id=alice.pk, conversation_id=cid, user_id=bob.pk
        )
        await b.expect_type("conversation.left")
        await asyncio.sleep(0.2)
    finally:
        await a.close()
        await b.close()
    c = await connect(carol)
    await c.close()
    seen = {f["type"] for f in recorded}
    for frame in recorded:
        check(frame)
    missing = set(protocol.SERVER_FRAMES) - seen - {"conversation.joined"}
    assert not missing, f"server frames never exercised here: {sorted(missing)}"


async def test_conversation_joined_matches_its_schema(recorded):
    alice, bob = await database_sync_to_async(lambda: [UserFactory() for _ in range(2)])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[])
    b = await connect(bob)
    try:
        await database_sync_to_async(services.participant_add)(
            actor_id=alice.pk, conversation_id=conv.id, user_id=bob.pk
        )
        joined = await b.expect_type("conversation.joined")
        assert joined["conversation"]["id"] == str(conv.id)
    finally:
        await b.close()
    for frame in recorded:
        check(frame)


def test_every_close_code_is_in_the_published_schema():
    doc = protocol.document()
    for code in CloseCode:
        assert str(code.value) in doc["description"]


def test_the_schema_is_published_next_to_the_openapi_docs(db):
    response = HttpClient().get("/api/schema/ws/")
    assert response.status_code == 200
    doc = response.json()
    jsonschema.Draft202012Validator.check_schema(doc)
    assert set(doc["$defs"]["server"]) == set(protocol.SERVER_FRAMES)
    assert {"message.send", "typing", "read", "resume", "status.set", "presence.sync", "ping"} <= set(
        doc["$defs"]["client"]
    )


def test_client_frame_schemas_accept_what_clients_send_and_refuse_junk():
    good = {"type": "message.send", "id": "1", "conversation_id": "c", "body": "hi", "client_msg_id": "k"}
    jsonschema.validate(good, protocol.CLIENT_FRAMES["message.send"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "message.send", "body": "hi"}, protocol.CLIENT_FRAMES["message.send"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "ping", "id": "x" * 65}, protocol.CLIENT_FRAMES["ping"])


def test_encode_is_compact_and_keeps_text():
    assert encode({"type": "x", "body": "héllo"}) == '{"type":"x","body":"héllo"}'
