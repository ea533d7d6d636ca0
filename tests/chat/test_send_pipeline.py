"""One socket's message.send frames: a send to one conversation does not wait for another
conversation's database round trip; one conversation's sends keep the order they were sent in,
and the acks leave in the order of the frames."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat import services
from chat.models import Message
from tests.chat.wsutil import connect
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def two_conversations():
    alice, bob = await database_sync_to_async(lambda: [UserFactory() for _ in range(2)])()
    first = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    second = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    return alice, first, second


async def _until(predicate, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await database_sync_to_async(predicate)():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_sends_to_other_conversations_do_not_wait_and_acks_keep_frame_order(two_conversations, monkeypatch):
    alice, first, second = two_conversations
    gate = asyncio.Event()
    calls: list[tuple[str, str]] = []
    real = services.amessage_send

    async def held_send(**kwargs):
        calls.append(("start", kwargs["body"]))
        if kwargs["body"] == "a1":
            await asyncio.wait_for(gate.wait(), 10)  # the first conversation's database round trip, held
        try:
            return await real(**kwargs)
        finally:
            calls.append(("end", kwargs["body"]))

    monkeypatch.setattr(services, "amessage_send", held_send)
    client = await connect(alice)
    try:
        for rid, conv, body in (("1", first, "a1"), ("2", first, "a2"), ("3", second, "b1")):
            await client.send({"type": "message.send", "id": rid, "conversation_id": str(conv.id), "body": body})
        # b1 is committed while a1 is still held ...
        assert await _until(lambda: Message.objects.filter(body="b1").exists())
        # ... a2 waits for a1 (one conversation, in order), and no ack overtakes a1's.
        assert ("start", "a2") not in calls
        assert not await database_sync_to_async(Message.objects.filter(body__in=["a1", "a2"]).exists)()
        # Other frames are answered after the sends before them.
        await client.send({"type": "ping", "id": "4"})
        await client.send({"type": "nonsense", "id": "5"})
        assert await client.nothing(0.2, ignore=("presence", "message.new"))
        gate.set()
        replies = [
            await client.expect(lambda f: f.get("type") in ("ack", "error", "pong"), timeout=5) for _ in range(5)
        ]
        assert [(r["id"], r["type"]) for r in replies] == [
            ("1", "ack"),
            ("2", "ack"),
            ("3", "ack"),
            ("4", "pong"),
            ("5", "error"),
        ]
        seqs = {r["message"]["body"]: r["message"]["seq"] for r in replies[:3]}
        assert seqs["a1"] < seqs["a2"]
    finally:
        gate.set()
        await client.c.disconnect()


async def test_a_send_takes_no_worker_thread_and_still_commits_before_its_ack(two_conversations, monkeypatch):
    """On PostgreSQL a socket's send runs its statement on the event loop (core/pg.py): nothing
    goes through the ORM's cursors on a worker thread, and the ack still follows the commit."""
    from django.db.backends import utils

    alice, first, _ = two_conversations
    orm_statements: list[str] = []
    real_execute = utils.CursorWrapper.execute

    def recording(self, sql, params=None):
        orm_statements.append(sql)
        return real_execute(self, sql, params)

    monkeypatch.setattr(utils.CursorWrapper, "execute", recording)
    client = await connect(alice)
    try:
        for i in range(3):
            await client.send(
                {"type": "message.send", "id": f"s{i}", "conversation_id": str(first.id), "body": f"m{i}"}
            )
            ack = await client.expect(lambda f: f.get("type") in ("ack", "error"), timeout=5)
            assert ack["type"] == "ack", ack
            # Committed when acked: another connection sees it at once.
            seq = ack["message"]["seq"]
            assert await database_sync_to_async(
                Message.objects.filter(conversation=first, seq=seq, body=f"m{i}").exists
            )()
        assert not [sql for sql in orm_statements if "INSERT INTO" in sql and "chat_message" in sql], orm_statements
    finally:
        await client.c.disconnect()


async def test_two_sockets_racing_one_client_msg_id_store_it_once(two_conversations):
    """The statement on the loop loses the race with a unique violation (no seq is used up);
    the loser answers with the original, as a repeat."""
    alice, first, _ = two_conversations
    sockets = [await connect(alice), await connect(alice)]
    try:
        for round_no in range(5):
            key = f"race-{round_no}"
            for n, client in enumerate(sockets):
                await client.send(
                    {
                        "type": "message.send",
                        "id": f"{key}-{n}",
                        "conversation_id": str(first.id),
                        "body": key,
                        "client_msg_id": key,
                    }
                )
            acks = [await client.expect(lambda f: f.get("type") in ("ack", "error"), timeout=5) for client in sockets]
            assert all(ack["type"] == "ack" for ack in acks), acks
            assert len({ack["message"]["id"] for ack in acks}) == 1
            assert sorted(ack["repeat"] for ack in acks) == [False, True]
        seqs = await database_sync_to_async(
            lambda: list(Message.objects.filter(conversation=first).order_by("seq").values_list("seq", flat=True))
        )()
        assert seqs == [1, 2, 3, 4, 5]  # once each, and no gap
    finally:
        for client in sockets:
            await client.c.disconnect()
