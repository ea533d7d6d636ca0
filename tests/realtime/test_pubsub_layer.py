"""The pub/sub layer's publishes wait for nothing but Redis (realtime/pubsub_layer.py), on a
real redis-server: not for each other, not for a subscription in progress, and a send to
several groups is one pipeline."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection

from realtime.bus import ChannelLayerBus
from realtime.pubsub_layer import RedisPubSubLayer


@pytest.fixture
async def layer(redis_server):
    layer = RedisPubSubLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"], prefix="test:layer")
    yield layer
    await layer.flush()


async def test_a_publish_does_not_wait_for_the_shard_lock_a_subscription_holds(layer):
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    shard = layer._get_layer()._shards[0]
    async with shard._lock:  # as a SUBSCRIBE in progress holds it (channels_redis waits here)
        await asyncio.wait_for(layer.group_send("room", {"type": "x", "n": 1}), 2)
    assert (await asyncio.wait_for(layer.receive(channel), 2))["n"] == 1


async def test_a_send_to_several_groups_is_one_round_trip(layer, redis_server, monkeypatch):
    channel = await layer.new_channel()
    groups = [f"g{i}" for i in range(5)]
    for group in groups:
        await layer.group_add(group, channel)
    await layer.group_send("warm-up", {"type": "x"})  # the pooled connection's own handshake first
    writes: list[int] = []
    original = Connection.send_packed_command

    async def counted(self, command, check_health=True):
        writes.append(1)
        return await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    bus = ChannelLayerBus()
    bus.layer = layer
    await bus.publish(groups, {"type": "x"})
    assert len(writes) == 1  # five PUBLISH commands, one write and one read
    got = [await asyncio.wait_for(layer.receive(channel), 2) for _ in groups]
    assert sorted(m["group"] for m in got) == groups


async def test_an_idle_receiver_waits_for_messages_instead_of_polling(layer, monkeypatch):
    """channels-redis asks Redis for a message every 0.1 s; an idle instance then spent a
    quarter of its CPU waking up. Here one read waits, and a message still ends it at once."""
    from redis.asyncio.client import PubSub

    calls: list[float] = []
    original = PubSub.get_message

    async def counted(self, *args, **kwargs):
        calls.append(kwargs.get("timeout", 0.0))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(PubSub, "get_message", counted)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await asyncio.sleep(0.3)  # the subscription's confirmation ends a read
    calls.clear()
    await asyncio.sleep(1.0)
    assert len(calls) <= 1, calls  # the library: ten
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    await layer.group_send("room", {"type": "x", "n": 1})
    assert (await asyncio.wait_for(layer.receive(channel), 2))["n"] == 1
    assert loop.time() - sent_at < 1.0, "a message must not wait for the read's timeout"
