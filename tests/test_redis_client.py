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
