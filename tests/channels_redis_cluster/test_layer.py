"""The sharded pub/sub layer on a real 6-node Redis Cluster: the channel-layer interface, one
connection per master, and recovery after a master SIGKILL, a hung master and a slot move."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
import redis

from channels_redis_cluster import RedisClusterChannelLayer

pytestmark = pytest.mark.rediscluster


def make_layer(cluster, **kw) -> RedisClusterChannelLayer:
    host, port = cluster.startup
    return RedisClusterChannelLayer(hosts=[f"redis://{host}:{port}"], prefix="t", **kw)


def groups_on_every_master(cluster, layer: RedisClusterChannelLayer, per_master: int = 2) -> dict[int, list[str]]:
    """Group names whose shard channels land on each master (port -> names)."""
    found: dict[int, list[str]] = {m.port: [] for m in cluster.masters()}
    for i in range(200):
        name = f"g{i}"
        port = cluster.master_of_key(layer.group_channel(name)).port
        if len(found[port]) < per_master:
            found[port].append(name)
        if all(len(v) == per_master for v in found.values()):
            return found
    raise AssertionError("no group names spread over the masters")


def shard_subscribers(cluster, shard: str) -> int:
    with cluster.master_of_key(shard).client() as c:
        return int(c.pubsub_shardnumsub(shard)[0][1])


async def recv(layer, channel, timeout: float = 3.0):
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def wait_for(pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_group_fan_out_across_masters_one_connection_each(redis_cluster):
    receiver, sender = make_layer(redis_cluster), make_layer(redis_cluster)
    try:
        spread = groups_on_every_master(redis_cluster, receiver)
        channels = [await receiver.new_channel() for _ in range(3)]
        for names in spread.values():
            for name in names:
                for ch in channels:
                    await receiver.group_add(name, ch)
        placed = receiver.subscriptions()
        for port, names in spread.items():
            for name in names:
                assert placed[receiver.group_channel(name)].endswith(f":{port}")
        # One pub/sub connection per master, each shard channel subscribed once per process.
        assert len(receiver._layer().nodes) == 3
        for names in spread.values():
            for name in names:
                assert shard_subscribers(redis_cluster, receiver.group_channel(name)) == 1
        for names in spread.values():
            for name in names:
                await sender.group_send(name, {"type": "chat.event", "group": name})
                for ch in channels:
                    assert await recv(receiver, ch) == {"type": "chat.event", "group": name}
    finally:
        await receiver.flush()
        await sender.flush()


async def test_send_receive_and_discard(redis_cluster):
    a, b = make_layer(redis_cluster), make_layer(redis_cluster)
    try:
        ch = await a.new_channel()
        await b.send(ch, {"type": "direct", "n": 1, "blob": b"\x00\x01"})
        assert await recv(a, ch) == {"type": "direct", "n": 1, "blob": b"\x00\x01"}

        await a.group_add("room", ch)
        await a.group_discard("room", ch)
        await wait_for(lambda: shard_subscribers(redis_cluster, a.group_channel("room")) == 0, 3)
        await b.group_send("room", {"type": "gone"})
        await b.send(ch, {"type": "after"})
        assert await recv(a, ch) == {"type": "after"}  # the group message never arrived
    finally:
        await a.flush()
        await b.flush()


async def test_messages_are_msgpack_on_the_shard_channel(redis_cluster):
    layer = make_layer(redis_cluster)
    try:
        ch = await layer.new_channel()
        await layer.group_add("raw", ch)
        host, port = redis_cluster.startup
        client = redis.RedisCluster(host=host, port=port)
        try:
            client.spublish(layer.group_channel("raw"), msgpack.packb({"type": "from.outside"}, use_bin_type=True))
        finally:
            client.close()
        assert await recv(layer, ch) == {"type": "from.outside"}
    finally:
        await layer.flush()


async def test_cancelled_receive_unsubscribes_and_flush_forgets(redis_cluster):
    layer = make_layer(redis_cluster)
    try:
        ch = await layer.new_channel()
        assert shard_subscribers(redis_cluster, layer.channel_shard(ch)) == 1
        task = asyncio.ensure_future(layer.receive(ch))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: shard_subscribers(redis_cluster, layer.channel_shard(ch)) == 0, 3)

        other = await layer.new_channel()
        await layer.group_add("room", other)
        await layer.flush()
        assert layer.subscriptions() == {}
        await wait_for(lambda: shard_subscribers(redis_cluster, layer.group_channel("room")) == 0, 3)
        # Usable again after a flush.
        again = await layer.new_channel()
        await layer.send(again, {"type": "x"})
        assert await recv(layer, again) == {"type": "x"}
    finally:
        await layer.flush()


async def _assert_recovers(redis_cluster, fault) -> None:
    """Subscribe groups on every master, apply ``fault(layer, spread)``, then every group delivers
    again and the resubscribe listener was called."""
    receiver, sender = make_layer(redis_cluster), make_layer(redis_cluster)
    calls: list[float] = []

    async def listener() -> None:
        calls.append(time.monotonic())

    receiver.add_resubscribe_listener(listener)
    try:
        spread = groups_on_every_master(redis_cluster, receiver, per_master=1)
        names = [n for ns in spread.values() for n in ns]
        ch = await receiver.new_channel()
        for name in names:
            await receiver.group_add(name, ch)
        await sender.group_send(names[0], {"type": "before"})
        assert await recv(receiver, ch) == {"type": "before"}

        await fault(receiver, spread)
        await wait_for(lambda: bool(calls), 15)
        # Messages flow again on every group, including those of the master that moved.
        for name in names:
            deadline = time.monotonic() + 10
            while True:
                try:
                    await sender.group_send(name, {"type": "after", "group": name})
                    break
                except redis.RedisError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            assert await recv(receiver, ch) == {"type": "after", "group": name}
        # Every shard channel is subscribed on the master that owns it now.
        for name in names:
            shard = receiver.group_channel(name)
            owner = redis_cluster.master_of_key(shard)
            assert receiver.subscriptions()[shard].endswith(f":{owner.port}")
            assert shard_subscribers(redis_cluster, shard) == 1
    finally:
        await receiver.flush()
        await sender.flush()


async def test_resubscribes_after_master_sigkill_and_replica_promotion(redis_cluster):
    async def kill(layer, spread):
        victim = redis_cluster.node_by_port(next(iter(spread)))
        await asyncio.to_thread(redis_cluster.kill_master, victim)

    await _assert_recovers(redis_cluster, kill)


async def test_resubscribes_after_a_hung_master_is_replaced(redis_cluster):
    async def freeze(layer, spread):
        victim = redis_cluster.node_by_port(next(iter(spread)))
        await asyncio.to_thread(redis_cluster.freeze_master, victim)

    await _assert_recovers(redis_cluster, freeze)


async def test_resubscribes_after_the_groups_slot_moves(redis_cluster):
    async def reshard(layer, spread):
        source_port, names = next(iter(spread.items()))
        slot = redis_cluster.keyslot(layer.group_channel(names[0]))
        target = next(m for m in redis_cluster.masters() if m.port != source_port)
        await asyncio.to_thread(redis_cluster.move_slot, slot, target)

    await _assert_recovers(redis_cluster, reshard)
