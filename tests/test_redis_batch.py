"""Commands of many coroutines in one round trip (core/redis_batch.py), on a real redis-server
and a real 6-node cluster: one pipeline per loop turn, each caller its own reply or error."""

from __future__ import annotations

import asyncio
import gc

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from core import redis_client
from core.redis_batch import Batcher
from harness.processes import free_port


def _reads(info: redis.Redis) -> int:
    """Socket reads the server has processed: one per command sent alone, one per pipeline
    (and one for this INFO)."""
    return int(info.info("stats")["total_reads_processed"])


async def _burst(run, n: int) -> list:
    return list(await asyncio.gather(*(run(i) for i in range(n))))


async def test_commands_of_one_loop_turn_share_one_round_trip(redis_server):
    client = redis_client.get_async()
    batcher = redis_client.batched()
    await client.mset({redis_client.key("b", i): i for i in range(200)})
    await batcher.execute("PING")  # its connection made (a new one sends its own handshake)
    info = redis.Redis(port=redis_server.port)
    try:
        before = _reads(info)
        values = await _burst(lambda i: batcher.execute("GET", redis_client.key("b", i)), 200)
        batched_reads = _reads(info) - before - 1
        assert values == [str(i) for i in range(200)]
        assert batcher.batches == 2 and batcher.commands == 201

        # The same burst through the plain client: a read per command (the measure can fail).
        before = _reads(info)
        plain = await _burst(lambda i: client.get(redis_client.key("b", i)), 200)
        plain_reads = _reads(info) - before - 1
    finally:
        info.close()
    assert plain == values
    assert batched_reads <= 2, batched_reads
    assert plain_reads >= 150, plain_reads
    await redis_client.close_async()


async def test_a_command_alone_is_sent_as_a_plain_command(redis_server, monkeypatch):
    client = redis_client.get_async()
    batcher = Batcher(client)
    pipelines = []
    monkeypatch.setattr(client, "pipeline", lambda *a, **k: pipelines.append(1))
    assert await batcher.execute("SET", redis_client.key("alone"), "1") is True
    assert await batcher.execute("GET", redis_client.key("alone")) == "1"
    assert pipelines == [] and batcher.batches == 2
    await redis_client.close_async()


async def test_a_large_burst_is_split_and_every_reply_reaches_its_caller(redis_server):
    client = redis_client.get_async()
    batcher = Batcher(client, max_batch=64)
    keys = [redis_client.key("split", i) for i in range(300)]
    await client.mset({k: f"v{i}" for i, k in enumerate(keys)})
    replies = await asyncio.gather(*(batcher.submit("GET", k) for k in keys))
    assert replies == [f"v{i}" for i in range(300)]
    assert batcher.batches == 5  # 64 * 4 + 44
    await redis_client.close_async()


async def test_an_error_reply_fails_its_own_command_only(redis_server):
    client = redis_client.get_async()
    batcher = Batcher(client)
    await client.set(redis_client.key("text"), "not a number")
    futures = [
        batcher.submit("INCR", redis_client.key("n")),
        batcher.submit("INCR", redis_client.key("text")),
        batcher.submit("INCR", redis_client.key("n")),
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], redis_exceptions.ResponseError)
    await redis_client.close_async()


async def test_a_connection_fault_fails_every_command_of_the_batch():
    pool = aioredis.ConnectionPool(port=free_port(), socket_connect_timeout=0.5, decode_responses=True)
    client = aioredis.Redis.from_pool(pool)
    try:
        batcher = Batcher(client)
        results = await asyncio.gather(*(batcher.submit("GET", f"k{i}") for i in range(5)), return_exceptions=True)
        assert len(results) == 5
        assert all(isinstance(r, redis_exceptions.ConnectionError) for r in results), results
        # Alone as well.
        with pytest.raises(redis_exceptions.ConnectionError):
            await batcher.execute("GET", "k")
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "error", [AttributeError("'NoneType' object has no attribute 'writelines'"), RuntimeError("handler is closed")]
)
async def test_the_cluster_clients_closed_connection_errors_are_connection_faults(redis_server, monkeypatch, error):
    """What redis-py's async cluster client raises when a master dies under a command (seen in
    the chaos suite's master SIGKILL and SIGSTOP): a Redis fault (503), alone or batched."""
    from redis.asyncio.connection import Connection

    async def broken(self, *args, **kwargs):
        raise error

    client = redis_client.get_async()
    batcher = Batcher(client)
    await batcher.execute("SET", "warm", 1)
    monkeypatch.setattr(Connection, "send_packed_command", broken)
    with pytest.raises(redis_exceptions.ConnectionError):
        await batcher.execute("GET", "k")
    results = await asyncio.gather(*(batcher.submit("GET", f"k{i}") for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, redis_exceptions.ConnectionError) for r in results), results
    monkeypatch.undo()
    await redis_client.close_async()


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis_server):
    client = redis_client.get_async()
    batcher = Batcher(client)
    await client.set(redis_client.key("c"), "x")
    gone = asyncio.ensure_future(batcher.execute("GET", redis_client.key("c")))
    stays = batcher.submit("GET", redis_client.key("c"))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == "x"
    with pytest.raises(asyncio.CancelledError):
        await gone
    # Let the batch finish; a reply set on a cancelled future would raise in the batch's task.
    await asyncio.gather(*batcher.running)
    gc.collect()
    await redis_client.close_async()


async def test_the_loop_batcher_follows_a_new_client(redis_server):
    first = redis_client.batched()
    assert redis_client.batched() is first
    await redis_client.close_async()
    second = redis_client.batched()
    assert second is not first and second.client is redis_client.get_async()
    await redis_client.close_async()


@pytest.mark.rediscluster
async def test_on_a_cluster_one_batch_reaches_every_master(settings, redis_cluster):
    _, port = redis_cluster.startup
    settings.REDIS = {**settings.REDIS, "host": "127.0.0.1", "port": port, "cluster": True, "db": 0}
    redis_client.reset_clients()
    try:
        batcher = redis_client.batched()
        keys = [redis_client.key(f"{{s{i}}}", "v") for i in range(60)]
        # Writes, a script with a key in each slot, and reads: replies in the callers' order.
        assert await asyncio.gather(*(batcher.submit("SET", k, str(i)) for i, k in enumerate(keys))) == [True] * 60
        script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
        bumped = await asyncio.gather(*(batcher.submit("EVAL", script, 1, k, 1000) for k in keys))
        assert bumped == [1000 + i for i in range(60)]
        assert await asyncio.gather(*(batcher.submit("GET", k) for k in keys)) == [str(1000 + i) for i in range(60)]
        assert batcher.batches == 3
        per_master = []
        for node in redis_cluster.masters():
            with node.client() as c:
                per_master.append(c.dbsize())
        assert all(n > 0 for n in per_master)
    finally:
        await redis_client.close_async()
        redis_client.reset_clients()
