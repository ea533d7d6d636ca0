"""The asyncio Redis client under a burst: more commands in flight than the pool has
connections wait for one, on a real redis-server, instead of failing (each failure was a 503)."""

from __future__ import annotations

import asyncio

from core import redis_client


async def test_a_burst_over_the_pool_size_waits_for_connections_instead_of_failing(redis_server):
    client = redis_client.get_async()
    burst = redis_client.MAX_CONNECTIONS + 50
    # Each BLPOP holds its connection for 0.2 s: the burst needs more connections than there are.
    results = await asyncio.gather(
        *(client.blpop([redis_client.key("burst", i)], timeout=0.2) for i in range(burst)), return_exceptions=True
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [None] * burst
    await redis_client.close_async()


async def test_the_pool_waits_only_when_it_must(redis_server, monkeypatch):
    """With a connection free and nobody waiting, a command takes the plain pool's path (no
    condition, no timer); with every connection taken it waits, and a release wakes it."""
    import redis.asyncio as aioredis

    timers = []  # entries into BlockingConnectionPool's waiting path (its condition and timer)
    waiting_path = aioredis.BlockingConnectionPool.get_connection

    async def counted(self, *args, **kwargs):
        timers.append(1)
        return await waiting_path(self, *args, **kwargs)

    monkeypatch.setattr(aioredis.BlockingConnectionPool, "get_connection", counted)
    pool = redis_client.WaitingConnectionPool(port=redis_server.port, max_connections=1, timeout=5)
    client = aioredis.Redis.from_pool(pool)
    try:
        assert await client.ping()
        assert timers == []
        # One connection: the second BLPOP waits for the first to give it back.
        first = asyncio.create_task(client.blpop([redis_client.key("wait", 1)], timeout=0.3))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(client.blpop([redis_client.key("wait", 2)], timeout=0.1))
        await asyncio.sleep(0.05)
        assert pool._waiting == 1
        assert await asyncio.wait_for(asyncio.gather(first, second), 3) == [None, None]
        assert len(timers) == 1 and pool._waiting == 0
        assert await client.ping()
        assert len(timers) == 1
    finally:
        await client.aclose()
