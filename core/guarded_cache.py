"""Redis-held copies of database facts that are invalidated exactly, on every instance at once.

Each cached fact is a pair of keys in one hash-tag slot: the value and a generation counter::

    <prefix>:{<tag>}:<name>        the cached value (a string), with a TTL as a last bound
    <prefix>:{<tag>}:<name>:gen    how many times the fact was invalidated

A reader that misses reads the generation with the value (one round trip), then the database,
then writes the value back only if the generation is still the one it saw (one script). An
invalidation increments the generation and deletes the value (one script). So a fill that read
the database before a change and writes after its invalidation is refused, whatever the timing:
a cached value is never older than the last invalidation. Writers invalidate after their
transaction commits; the signal handlers that call ``invalidate_sync`` inside the transaction as
well make a Redis fault fail the write (503) instead of leaving a stale copy behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from core.redis_client import batched, get_sync, key

# A cached value outlives no change (invalidation is exact); the TTL only bounds what an
# unused fact costs in Redis. The generation lives longer than any fill takes.
VALUE_TTL_SECONDS = 24 * 3600
GEN_TTL_SECONDS = 7 * 24 * 3600

# KEYS: value, gen. ARGV: value, generation seen by the reader ("" for none), ttl.
_FILL_LUA = """
local gen = redis.call('GET', KEYS[2]) or ''
if gen ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

# KEYS: value, gen. ARGV: gen ttl.
_INVALIDATE_LUA = """
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass(frozen=True)
class Read:
    value: str | None
    gen: str  # "" when the fact was never invalidated (or its generation expired)


def keys(tag: str, name: str) -> tuple[str, str]:
    value_key = key(f"{{{tag}}}", name)
    return value_key, f"{value_key}:gen"


async def read(tag: str, name: str) -> Read:
    # One command (both keys are in the tag's slot), batched with the loop's other commands.
    value, gen = await batched().execute("MGET", *keys(tag, name))
    return Read(value, gen or "")


async def read_many(items: list[tuple[str, str]]) -> list[str | None]:
    """The values of several facts in one round trip (each key its own slot), no generations:
    for facts that only ever grow, where a missing value is filled with ``raise_to``."""
    if not items:
        return []
    batcher = batched()
    return list(await asyncio.gather(*(batcher.submit("GET", keys(tag, name)[0]) for tag, name in items)))


async def fill(tag: str, name: str, value: str, seen: Read) -> bool:
    """Store ``value`` unless the fact was invalidated since ``seen`` was read."""
    value_key, gen_key = keys(tag, name)
    result: Any = await batched().execute("EVAL", _FILL_LUA, 2, value_key, gen_key, value, seen.gen, VALUE_TTL_SECONDS)
    return bool(result)


def invalidate_sync(tag: str, name: str) -> None:
    value_key, gen_key = keys(tag, name)
    get_sync().eval(_INVALIDATE_LUA, 2, value_key, gen_key, GEN_TTL_SECONDS)


def invalidate_many_sync(items: list[tuple[str, str]]) -> None:
    """Several facts in one round trip (one script call per slot, pipelined)."""
    if not items:
        return
    pipe = get_sync().pipeline(transaction=False)
    for tag, name in items:
        value_key, gen_key = keys(tag, name)
        # EVAL as a plain command: redis-py's sync cluster pipeline refuses pipe.eval().
        pipe.execute_command("EVAL", _INVALIDATE_LUA, 2, value_key, gen_key, GEN_TTL_SECONDS)
    pipe.execute()


# --- counters that only grow (a conversation's last seq) -------------------------------------

# KEYS: value. ARGV: candidate, ttl. Keeps the larger of the stored and the candidate value.
_RAISE_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""


def raise_to_sync(items: list[tuple[str, str, int]]) -> None:
    """Raise each counter to at least its value (a lower one arriving late changes nothing)."""
    if not items:
        return
    pipe = get_sync().pipeline(transaction=False)
    for tag, name, value in items:
        pipe.execute_command("EVAL", _RAISE_LUA, 1, keys(tag, name)[0], value, VALUE_TTL_SECONDS)
    pipe.execute()


async def raise_to(items: list[tuple[str, str, int]]) -> None:
    if not items:
        return
    batcher = batched()
    await asyncio.gather(
        *(
            batcher.submit("EVAL", _RAISE_LUA, 1, keys(tag, name)[0], value, VALUE_TTL_SECONDS)
            for tag, name, value in items
        )
    )
