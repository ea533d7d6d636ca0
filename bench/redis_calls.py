"""Client CPU per Redis command: one at a time per caller against the same commands batched per
event-loop turn (core/redis_batch.py), with many callers at once as in a reconnect storm.

    .venv/bin/python -m bench.redis_calls [--callers 2000] [--commands 5]

Starts its own redis-server on a free port (harness). Prints microseconds of this process's CPU
per command for the plain client and for the batcher, and their ratio, for two rounds each.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio as aioredis
import uvloop

from core.redis_batch import Batcher
from harness.processes import RedisServer


async def measure(port: int, callers: int, commands: int) -> dict[str, list[float]]:
    pool = aioredis.BlockingConnectionPool(port=port, max_connections=50, timeout=2, decode_responses=True)
    client = aioredis.Redis.from_pool(pool)
    await client.set("k", "v")
    batcher = Batcher(client)
    limit = asyncio.Semaphore(200)  # callers in flight, as the connect slots bound them
    out: dict[str, list[float]] = {"plain": [], "batched": []}
    try:
        for mode in ("plain", "batched", "plain", "batched"):

            async def caller(mode: str = mode) -> None:
                async with limit:
                    for _ in range(commands):
                        if mode == "plain":
                            await client.get("k")
                        else:
                            await batcher.execute("GET", "k")

            start = time.process_time()
            await asyncio.gather(*(caller() for _ in range(callers)))
            out[mode].append(1e6 * (time.process_time() - start) / (callers * commands))
    finally:
        await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=2000)
    parser.add_argument("--commands", type=int, default=5)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        out = uvloop.run(measure(server.port, args.callers, args.commands))
    finally:
        server.stop()
    for mode, values in out.items():
        print(f"{mode:8} {' '.join(f'{v:6.1f}' for v in values)} us of CPU per command")
    print(f"ratio    {min(out['plain']) / min(out['batched']):.1f}x fewer with batching (best of each)")


if __name__ == "__main__":
    main()
