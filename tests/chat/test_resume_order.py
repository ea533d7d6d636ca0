"""A reconnecting client's resume is not overtaken by live messages that arrive before it."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat import services
from tests.chat.wsutil import connect
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def pair():
    alice, bob = await database_sync_to_async(lambda: [UserFactory() for _ in range(2)])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    return alice, bob, conv


async def test_live_message_before_the_resume_does_not_overtake_the_missed_ones(pair):
    alice, bob, conv = pair
    cid = str(conv.id)
    for i in range(3):  # committed while bob was away
        await database_sync_to_async(services.message_send)(sender_id=alice.pk, conversation_id=conv.id, body=f"m{i}")
    b = await connect(bob)
    a = await connect(alice)
    # A live message between bob's hello and his resume.
    ack = await a.request({"type": "message.send", "id": "live", "conversation_id": cid, "body": "live"})
    assert ack["message"]["seq"] == 4
    await asyncio.sleep(0.2)
    await b.send({"type": "resume", "id": "r", "cursors": {cid: 0}})
    seqs = []
    while True:
        frame = await b.next()
        if frame["type"] == "ack" and frame.get("id") == "r":
            break
        if frame["type"] == "message.new":
            seqs.append(frame["message"]["seq"])
    assert seqs == [1, 2, 3, 4]
    await a.close()
    await b.close()


async def test_a_client_that_sends_nothing_still_gets_live_messages(pair):
    alice, bob, conv = pair
    b = await connect(bob)
    a = await connect(alice)
    await a.request({"type": "message.send", "id": "1", "conversation_id": str(conv.id), "body": "hi"})
    frame = await b.expect_type("message.new", timeout=3)
    assert frame["message"]["body"] == "hi"
    await a.close()
    await b.close()
