"""The connection registry on real Redis and in-process (single mode): the same behaviour, and
on Redis every script touches keys of one hash slot only (so it runs on Redis Cluster)."""

from __future__ import annotations

import time

import pytest
from redis.crc import key_slot

from core import redis_client
from realtime import registry as registry_module
from realtime.registry import (
    SHARDS,
    Connection,
    LocalRegistry,
    RedisRegistry,
    conn_key,
    instance_conns_key,
    instance_key,
    online_key,
    pending_key,
    user_conns_key,
)


def conn(cid: str, user_id: int, instance_id: str = "here") -> Connection:
    now = time.time()
    return Connection(cid, user_id, instance_id, f"chan!{cid}", now, now, "127.0.0.1", "test")


@pytest.fixture(params=["redis", "local"])
def registry(request, settings):
    settings.INSTANCE_ID = "here"
    settings.PRESENCE_GRACE_SECONDS = 0.2
    settings.INSTANCE_TTL_SECONDS = 1.0
    return RedisRegistry() if request.param == "redis" else LocalRegistry()


async def test_first_connection_makes_a_user_online_and_a_second_does_not(registry):
    assert await registry.add(conn("c1", 7)) is True
    assert await registry.add(conn("c2", 7)) is False
    assert await registry.online_users([7, 8]) == {7}
    assert await registry.user_connection_count(7) == 2
    assert {c.connection_id for c in await registry.user_connections(7)} == {"c1", "c2"}


async def test_last_connection_gone_goes_offline_after_the_grace_only(registry):
    await registry.add(conn("c1", 7))
    await registry.remove("c1", 7)
    assert await registry.due_offline() == []  # still within the grace
    time.sleep(0.3)
    assert await registry.due_offline() == [7]
    assert await registry.online_users([7]) == set()
    assert await registry.due_offline() == []  # once


async def test_reconnect_within_the_grace_cancels_going_offline(registry):
    await registry.add(conn("c1", 7))
    await registry.remove("c1", 7)
    assert await registry.add(conn("c2", 7)) is False  # still online: nothing to announce
    time.sleep(0.3)
    assert await registry.due_offline() == []
    assert await registry.online_users([7]) == {7}


async def test_users_spread_over_every_shard_are_all_swept(registry):
    users = list(range(1, 2 * SHARDS + 1))
    for uid in users:
        await registry.add(conn(f"c{uid}", uid))
        await registry.remove(f"c{uid}", uid)
    time.sleep(0.3)
    assert sorted(await registry.due_offline()) == users


async def test_a_dead_instance_is_reaped_once_and_its_users_go_offline_after_the_grace(settings):
    settings.PRESENCE_GRACE_SECONDS = 0.2
    settings.INSTANCE_TTL_SECONDS = 0.5
    dead, a, b = RedisRegistry(), RedisRegistry(), RedisRegistry()
    dead.instance_id, a.instance_id, b.instance_id = "dead", "a", "b"
    await dead.add(conn("c1", 7, "dead"))
    await dead.add(conn("c2", 8, "dead"))
    await dead.heartbeat()
    await a.add(conn("c3", 8, "a"))  # user 8 is still connected elsewhere
    time.sleep(0.6)
    await a.heartbeat()
    await b.heartbeat()
    reaped = sorted(await a.reap_dead()) + sorted(await b.reap_dead())
    assert reaped == [("c1", 7), ("c2", 8)]
    assert [i.instance_id for i in await a.instances()] == ["a", "b"]
    time.sleep(0.3)
    assert await b.due_offline() == [7]
    assert await a.online_users([7, 8]) == {8}


async def test_heartbeat_writes_local_connections_back_after_redis_lost_them(settings):
    settings.INSTANCE_ID = "here"
    registry = RedisRegistry()
    await registry.add(conn("c1", 7))
    await registry.heartbeat()
    redis_client.get_sync().flushall()
    assert await registry.heartbeat() is True
    assert [c.connection_id for c in await registry.user_connections(7)] == ["c1"]
    assert await registry.online_users([7]) == {7}
    assert [c.connection_id for c in await registry.all_connections()] == ["c1"]


def test_each_script_touches_one_slot():
    """The keys a script declares together hash to one slot (hash tags), for every user."""
    for uid in range(3 * SHARDS):
        shard = uid % SHARDS
        together = [conn_key(uid, "x"), user_conns_key(uid), pending_key(shard), online_key(shard)]
        assert len({key_slot(k.encode()) for k in together}) == 1, together
    assert key_slot(instance_conns_key("a").encode()) == key_slot(instance_key("a").encode())
    # Shards spread: 16 shard tags land on more than one slot range (several cluster masters).
    assert len({key_slot(pending_key(s).encode()) // 5462 for s in range(SHARDS)}) == 3


def test_no_script_builds_keys_from_its_arguments():
    for name in ("_ADD_LUA", "_REMOVE_LUA", "_DUE_LUA"):
        assert "ARGV[1] .." not in getattr(registry_module, name)
        assert ".. ':" not in getattr(registry_module, name)
