"""Privacy over real HTTP and real sockets: no id oracle, the add policy, and an invisible user
who reveals nothing (no moving version or last_seen) to contacts."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from channels.db import database_sync_to_async

from presence.models import UserStatus
from tests.factories import ConversationFactory, UserFactory
from tests.integration.conftest import open_ws, token
from tests.security.live import ahttp, cluster_of, http

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MISSING = 987654


@pytest.fixture
def server(tmp_path):
    c = cluster_of(tmp_path, servers={"a": "uvicorn"})
    yield c.servers["a"]
    c.stop()


@pytest.fixture
def contacts_server(tmp_path):
    c = cluster_of(tmp_path, servers={"a": "daphne"}, CONVERSATION_ADD_POLICY="contacts")
    yield c.servers["a"]
    c.stop()


def create(server, tok: str, ids: list[int]):
    return http("POST", server, "/api/conversations/", {"participant_ids": ids}, token=tok)


def test_conversation_creation_reveals_no_ids(server, transactional_db):
    me, friend = UserFactory(), UserFactory()
    gone = UserFactory(is_active=False)
    tok = token(me)
    answers = [create(server, tok, ids) for ids in ([friend.pk, MISSING], [friend.pk, gone.pk], [MISSING])]
    for r in answers:
        assert r.status_code == 400
        assert not re.search(r"\d", json.dumps([r.json()["detail"], r.json()["errors"]]))
    assert len({r.text for r in answers}) == 1  # unknown and deactivated ids answer alike
    r = http("POST", server, "/api/conversations/", {"participant_ids": list(range(1, 1001))}, token=tok)
    assert r.status_code == 400 and not re.search(r"\d{2,}", json.dumps(r.json()["errors"]))
    assert create(server, tok, [friend.pk]).status_code == 201


def test_contacts_policy_refuses_strangers_exactly_like_missing_ids(contacts_server, transactional_db):
    me, contact, stranger = UserFactory(), UserFactory(), UserFactory()
    ConversationFactory(owner=contact, members=[me])
    tok = token(me)
    refused = [create(contacts_server, tok, [stranger.pk]), create(contacts_server, tok, [MISSING])]
    assert [r.status_code for r in refused] == [400, 400]
    assert refused[0].text == refused[1].text
    r = create(contacts_server, tok, [contact.pk])
    assert r.status_code == 201
    cid = r.json()["id"]
    add = [
        http("POST", contacts_server, f"/api/conversations/{cid}/participants/", {"user_id": uid}, token=tok)
        for uid in (stranger.pk, MISSING)
    ]
    assert [a.status_code for a in add] == [400, 400] and add[0].text == add[1].text
    # The stranger's presence stays out of reach.
    assert http("GET", contacts_server, f"/api/users/{stranger.pk}/status/", token=tok).status_code == 403


def test_status_of_a_missing_user_answers_like_a_strangers(server, transactional_db):
    me, stranger = UserFactory(), UserFactory()
    tok = token(me)
    missing = http("GET", server, f"/api/users/{MISSING}/status/", token=tok)
    strange = http("GET", server, f"/api/users/{stranger.pk}/status/", token=tok)
    assert missing.status_code == strange.status_code == 403
    assert missing.json() == strange.json()


async def test_invisible_user_reveals_nothing_to_contacts(server, transactional_db):
    alice, bob, carol = await database_sync_to_async(lambda: [UserFactory() for _ in range(3)])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob, carol])
    await database_sync_to_async(ConversationFactory)(owner=bob, members=[alice])  # a second shared one
    tokens = {u.pk: await database_sync_to_async(token)(u) for u in (alice, bob, carol)}
    auth = {u: {"Authorization": f"Token {tokens[u.pk]}"} for u in (alice, bob, carol)}

    r = await ahttp("PUT", server, "/api/me/status/", {"status": "invisible"}, token=tokens[alice.pk])
    assert r.status_code == 200
    bob_ws = await open_ws(server.ws_url, headers=auth[bob])
    carol_ws = await open_ws(server.ws_url, headers=auth[carol])

    def alice_as_bob_sees_her():
        r = http("GET", server, f"/api/users/{alice.pk}/status/", token=tokens[bob.pk])
        return r.json()

    before = await asyncio.to_thread(alice_as_bob_sees_her)
    assert (before["status"], before["online"]) == ("offline", False)

    # Alice connects, changes her text and leaves; bob must hear nothing of it.
    alice_ws = await open_ws(server.ws_url, headers=auth[alice])
    ack = await alice_ws.request({"type": "status.set", "id": "s", "status": "invisible", "text": "secret"})
    assert ack["type"] == "ack"
    await alice_ws.close()

    def offline_again() -> None:
        deadline = time.monotonic() + 15
        while UserStatus.objects.get(user_id=alice.pk).online:
            assert time.monotonic() < deadline, "grace period did not end"
            time.sleep(0.2)

    await database_sync_to_async(offline_again)()
    # A marker after all of it: bob sees carol's message, and nothing about alice before it.
    sent = await carol_ws.request({"type": "message.send", "id": "m", "conversation_id": str(conv.id), "body": "x"})
    assert sent["type"] == "ack"
    await bob_ws.expect_type("message.new")
    leaked = [f for f in bob_ws.backlog if f.get("type") == "presence" and f.get("user_id") == alice.pk]
    assert leaked == []

    after = await asyncio.to_thread(alice_as_bob_sees_her)
    assert after == before  # neither version nor last_seen moved
    snapshot = (await ahttp("GET", server, "/api/presence/", token=tokens[bob.pk])).json()["results"]
    assert [p for p in snapshot if p["user_id"] == alice.pk] == [before]
    assert len(snapshot) == len({p["user_id"] for p in snapshot})
    await bob_ws.close()
    await carol_ws.close()
