"""The router keeps seq order per conversation, fills gaps from the database, and owns the
instance's subscriptions (real channel layer on the test Redis, real database)."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from chat.models import Conversation, Message
from chat.presenters import message as message_dict
from core.runtime import runtime
from realtime.protocol import conversation_group, envelope, user_group
from realtime.registry import get_registry
from realtime.router import router
from realtime.watchdog import watchdog
from tests.chat.wsutil import connect
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _store(conv, sender, seqs):
    """Commit messages without publishing their events (as if the events were lost)."""
    rows = [
        Message.objects.create(conversation=conv, seq=s, sender=sender, body=f"m{s}", created_at=timezone.now())
        for s in seqs
    ]
    Conversation.objects.filter(pk=conv.pk).update(last_seq=max(seqs))
    return rows


async def _publish(conv, message):
    frame = {"type": "message.new", "message": message_dict(message)}
    env = envelope({"kind": "conversation", "id": str(conv.id)}, frame, seq=message.seq)
    await get_channel_layer().group_send(conversation_group(conv.id), {**env, "group": conversation_group(conv.id)})


@pytest.fixture
async def pair():
    alice, bob = await database_sync_to_async(lambda: [UserFactory(), UserFactory()])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    return alice, bob, conv


async def _seqs(client, n):
    return [(await client.expect_type("message.new"))["message"]["seq"] for _ in range(n)]


async def test_out_of_order_events_are_delivered_in_seq_order(pair):
    alice, bob, conv = pair
    b = await connect(bob)
    m1, m2, m3 = await database_sync_to_async(_store)(conv, alice, [1, 2, 3])
    await _publish(conv, m3)
    await _publish(conv, m1)
    await _publish(conv, m2)
    assert await _seqs(b, 3) == [1, 2, 3]
    assert await b.nothing(0.7)
    await b.close()


async def test_lost_event_is_filled_from_the_database(pair):
    alice, bob, conv = pair
    b = await connect(bob)
    rows = await database_sync_to_async(_store)(conv, alice, [1, 2, 3])
    await _publish(conv, rows[2])  # the events of 1 and 2 never arrive
    assert await _seqs(b, 3) == [1, 2, 3]
    await b.close()


async def test_catch_up_delivers_messages_whose_events_never_came(pair):
    alice, bob, conv = pair
    b = await connect(bob)
    await database_sync_to_async(_store)(conv, alice, [1, 2])
    await router.catch_up()
    assert await _seqs(b, 2) == [1, 2]
    await b.close()


async def test_probe_round_trips_through_the_layer(pair):
    _, bob, _ = pair
    b = await connect(bob)
    latency = await watchdog.probe(timeout=2)
    assert 0 <= latency < 2
    await b.close()


async def test_connect_whose_subscribe_fails_leaves_nothing_behind(pair, monkeypatch):
    """A subscribe that times out during connect closes the socket with 1011 and undoes the
    routing: no phantom session in the router (connections.local stays true), no registry entry,
    and the group is not marked, so the next connect subscribes for real."""
    _, bob, conv = pair
    await runtime.ensure_started()
    real_group_add_many = router.bus.layer.group_add_many
    calls = []

    async def failing_group_add_many(groups, channel):
        calls.extend(groups)
        raise TimeoutError

    monkeypatch.setattr(router.bus.layer, "group_add_many", failing_group_add_many)
    b = await connect(bob)
    # The hello was queued but never written: the socket is not routed, so it only gets 1011.
    assert not b.hello
    assert b.backlog == [{"type": "__closed__", "code": 1011}]
    assert calls, "the failing subscribe was reached"
    await b.close()  # the server's websocket.disconnect after the close handshake
    assert not [c for c in router.sessions if c.user_id == bob.pk]
    assert bob.pk not in router.by_user and str(conv.id) not in router.by_topic
    assert user_group(bob.pk) not in router.groups
    assert await get_registry().user_connections(bob.pk) == []

    monkeypatch.setattr(router.bus.layer, "group_add_many", real_group_add_many)
    b2 = await connect(bob)
    assert user_group(bob.pk) in router.groups and conversation_group(conv.id) in router.groups
    assert [c.connection_id for c in await get_registry().user_connections(bob.pk)] == [b2.hello["connection_id"]]
    await b2.close()


async def test_concurrent_connects_subscribe_each_group_once(monkeypatch):
    """Sockets connecting at the same time share the instance's subscriptions: one subscribe
    per group, made in a row by the router, and every socket is fed afterwards."""
    users = await database_sync_to_async(lambda: [UserFactory() for _ in range(30)])()
    conv = await database_sync_to_async(ConversationFactory)(owner=users[0], members=users[1:])
    await runtime.ensure_started()
    real_group_add_many = router.bus.layer.group_add_many
    calls: list[str] = []
    batches: list[int] = []

    async def counting_group_add_many(groups, channel):
        calls.extend(groups)
        batches.append(len(groups))
        await real_group_add_many(groups, channel)

    monkeypatch.setattr(router.bus.layer, "group_add_many", counting_group_add_many)
    clients = await asyncio.gather(*(connect(u) for u in users))
    try:
        assert all(c.hello for c in clients)
        assert sorted(calls) == sorted([conversation_group(conv.id)] + [user_group(u.pk) for u in users])
        msg = await database_sync_to_async(_store)(conv, users[0], [1])
        await _publish(conv, msg[0])
        for client in clients:
            assert await _seqs(client, 1) == [1]
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_subscriptions_queued_together_go_out_in_one_batch(monkeypatch):
    """Subscriptions that queue while the router's subscriber has not run yet (a connect burst)
    are made in one call of the layer (one SUBSCRIBE per shard), not one loop turn each."""
    await runtime.ensure_started()
    real_group_add_many = router.bus.layer.group_add_many
    batches: list[list[str]] = []

    async def recording_group_add_many(groups, channel):
        batches.append(list(groups))
        await real_group_add_many(groups, channel)

    monkeypatch.setattr(router.bus.layer, "group_add_many", recording_group_add_many)
    groups = [f"burst-{i}" for i in range(5)]
    monkeypatch.setattr(router, "_wanted", lambda group: True)
    await asyncio.gather(*(router._subscribe(g) for g in groups))
    assert batches == [groups]
    assert set(groups) <= router.groups
    for group in groups:
        await router._unsubscribe(group)
