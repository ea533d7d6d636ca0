"""The connection registry: who is connected, where, since when.

Groups cannot be listed, so this is the truth about connections across instances. Keys, under
``REDIS_KEY_PREFIX`` (``p``), each with a hash tag so that every script touches one slot and the
same code runs on one Redis, behind Sentinel and on Redis Cluster::

    p:{s<k>}:u:<user>:conns     zset  conn_id -> last_seen          k = user id % SHARDS
    p:{s<k>}:conn:<conn_id>     hash  user_id, instance_id, channel, connected_at, last_seen, addr, ua
    p:{s<k>}:pending            zset  user_id -> when to go offline (last connection closed)
    p:{s<k>}:online             set   user ids shown online (a connection, or within the grace)
    p:{inst:<id>}:conns         set   "<user_id>:<conn_id>" of the instance's connections
    p:{inst:<id>}               hash  started_at, host, pid, connections
    p:{inst:<id>}:reaping       str   lease of the instance reaping it (30 s)
    p:instances                 zset  instance_id -> last heartbeat (unix seconds)

A user's connections, their hashes and the user's place in the presence sets share one shard
slot, so connecting, disconnecting and a due offline transition are each one atomic script.
Presence is partitioned over SHARDS slots (spread over a cluster's masters); every living
instance sweeps them all, so a grace period outlives the instance that started it.

Each instance renews its heartbeat several times per INSTANCE_TTL_SECONDS. Any living instance
reaps an instance whose heartbeat is older than the TTL: it takes the instance's reaping lease
(SET NX, so one reaper at a time), removes each connection with the same script as a disconnect
(idempotent: a reaper that dies half-way is followed by another), then deletes the instance.
In single mode (no Redis) the same interface is kept in this process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from django.conf import settings

from core import metrics, redis_client
from core.redis_client import key

logger = logging.getLogger("realtime.registry")

T = TypeVar("T")

SHARDS = 16
DUE_BATCH = 500
REAP_LEASE_SECONDS = 30


def shard_of(user_id: int) -> str:
    return f"{{s{int(user_id) % SHARDS}}}"


def user_conns_key(user_id: int) -> str:
    return key(shard_of(user_id), "u", user_id, "conns")


def conn_key(user_id: int, conn_id: str) -> str:
    return key(shard_of(user_id), "conn", conn_id)


def pending_key(shard: int) -> str:
    return key(f"{{s{shard}}}", "pending")


def online_key(shard: int) -> str:
    return key(f"{{s{shard}}}", "online")


def instance_conns_key(instance_id: str) -> str:
    return key(f"{{inst:{instance_id}}}", "conns")


def instance_key(instance_id: str) -> str:
    return key(f"{{inst:{instance_id}}}")


def instances_key() -> str:
    return key("instances")


@dataclass
class Connection:
    connection_id: str
    user_id: int
    instance_id: str
    channel: str
    connected_at: float
    last_seen: float
    remote_addr: str = ""
    user_agent: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hash(cls, conn_id: str, data: dict[str, str]) -> Connection:
        return cls(
            connection_id=conn_id,
            user_id=int(data.get("user_id", 0)),
            instance_id=data.get("instance_id", ""),
            channel=data.get("channel", ""),
            connected_at=float(data.get("connected_at", 0)),
            last_seen=float(data.get("last_seen", 0)),
            remote_addr=data.get("remote_addr", ""),
            user_agent=data.get("user_agent", ""),
        )


@dataclass
class Instance:
    instance_id: str
    connections: int
    last_heartbeat: float
    alive: bool


class Registry(Protocol):
    async def add(self, conn: Connection) -> bool: ...
    async def remove(self, conn_id: str, user_id: int) -> None: ...
    async def due_offline(self) -> list[int]: ...
    async def online_users(self, user_ids: list[int]) -> set[int]: ...
    async def touch(self, conn_id: str, user_id: int) -> None: ...
    async def heartbeat(self) -> bool: ...
    async def deregister_instance(self) -> None: ...
    async def reap_dead(self) -> list[tuple[str, int]]: ...
    async def user_connections(self, user_id: int) -> list[Connection]: ...
    async def all_connections(self) -> list[Connection]: ...
    async def instances(self) -> list[Instance]: ...
    async def user_connection_count(self, user_id: int) -> int: ...


# KEYS: conn hash, user conns, pending, online (one shard slot).
# ARGV: conn id, user id, last seen, then the hash's field/value pairs.
# Returns 1 when the user was not online before.
_ADD_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
return redis.call('SADD', KEYS[4], ARGV[2])
"""

# KEYS: conn hash, user conns, pending (one shard slot). ARGV: conn id, user id, offline at.
# Idempotent: removing a connection twice schedules nothing new for a user who has others.
_REMOVE_LUA = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
return 1
"""

# KEYS: pending, online, then the conns zset of each candidate user (one shard slot).
# ARGV: now, then the candidate user ids in the order of their KEYS. Users whose grace ended
# with no connection left go offline (returned); users who came back just leave the pending set.
_DUE_LUA = """
local out = {}
for i = 2, #ARGV do
  local uid = ARGV[i]
  local when = redis.call('ZSCORE', KEYS[1], uid)
  if when and tonumber(when) <= tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], uid)
    if redis.call('ZCARD', KEYS[i + 1]) == 0 then
      if redis.call('SREM', KEYS[2], uid) == 1 then table.insert(out, uid) end
    end
  end
end
return out
"""


class RedisRegistry:
    def __init__(self) -> None:
        self.instance_id: str = settings.INSTANCE_ID
        self.started_at = time.time()
        self.beats = 0
        self.local: dict[str, Connection] = {}  # this instance's, written back if Redis lost them
        # Set by the drain's deregistration: the heartbeat loop runs until the server's own
        # shutdown ends, and must not write the instance back meanwhile.
        self.deregistered = False

    @property
    def _r(self) -> Any:
        return redis_client.get_async()

    async def add(self, conn: Connection) -> bool:
        """Register a connection. Returns True when the user was not online before."""
        fields = ["user_id", "instance_id", "channel", "connected_at", "last_seen", "remote_addr", "user_agent"]
        values = conn.as_dict()
        mapping: list[str] = []
        for name in fields:
            mapping += [name, str(values[name])]
        shard = conn.user_id % SHARDS
        if conn.instance_id == self.instance_id:
            self.local[conn.connection_id] = conn
        # The instance's list first: an instance that dies between the two steps is reaped with
        # a connection the user's slot never had, which the (idempotent) removal ignores.
        # Batched with the other sockets' commands of this loop turn (core/redis_batch.py); the
        # second waits for the first, so the order holds.
        batcher = redis_client.batched()
        await batcher.execute("SADD", instance_conns_key(conn.instance_id), f"{conn.user_id}:{conn.connection_id}")
        added = await batcher.execute(
            "EVAL",
            _ADD_LUA,
            4,
            conn_key(conn.user_id, conn.connection_id),
            user_conns_key(conn.user_id),
            pending_key(shard),
            online_key(shard),
            conn.connection_id,
            conn.user_id,
            conn.last_seen,
            *mapping,
        )
        return bool(int(added))

    async def _remove_in_user_slot(self, conn_id: str, user_id: int) -> None:
        await redis_client.batched().execute(
            "EVAL",
            _REMOVE_LUA,
            3,
            conn_key(user_id, conn_id),
            user_conns_key(user_id),
            pending_key(user_id % SHARDS),
            conn_id,
            user_id,
            time.time() + settings.PRESENCE_GRACE_SECONDS,
        )

    async def remove(self, conn_id: str, user_id: int) -> None:
        self.local.pop(conn_id, None)
        await self._remove_in_user_slot(conn_id, user_id)
        await redis_client.batched().execute("SREM", instance_conns_key(self.instance_id), f"{user_id}:{conn_id}")

    async def due_offline(self) -> list[int]:
        now = time.time()
        async with self._r.pipeline(transaction=False) as pipe:
            for shard in range(SHARDS):
                pipe.zrangebyscore(pending_key(shard), "-inf", now, start=0, num=DUE_BATCH)
            due = await pipe.execute()
        out: list[int] = []
        for shard, uids in enumerate(due):
            if not uids:
                continue
            gone = await self._r.eval(
                _DUE_LUA,
                2 + len(uids),
                pending_key(shard),
                online_key(shard),
                *(user_conns_key(int(uid)) for uid in uids),
                now,
                *uids,
            )
            out.extend(int(uid) for uid in gone)
        return out

    async def online_users(self, user_ids: list[int]) -> set[int]:
        if not user_ids:
            return set()
        by_shard: dict[int, list[int]] = defaultdict(list)
        for uid in user_ids:
            by_shard[uid % SHARDS].append(uid)
        shards = list(by_shard)
        async with self._r.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.smismember(online_key(shard), [str(u) for u in by_shard[shard]])
            replies = await pipe.execute()
        online: set[int] = set()
        for shard, flags in zip(shards, replies, strict=True):
            online.update(u for u, flag in zip(by_shard[shard], flags, strict=True) if flag)
        return online

    async def touch(self, conn_id: str, user_id: int) -> None:
        now = time.time()
        batcher = redis_client.batched()
        await asyncio.gather(
            batcher.submit("HSET", conn_key(user_id, conn_id), "last_seen", str(now)),
            batcher.submit("ZADD", user_conns_key(user_id), "XX", now, conn_id),
        )

    async def heartbeat(self) -> bool:
        """Renew this instance's heartbeat. When Redis lost our entry (it restarted empty, or we
        were reaped after a long stall), write every local connection back. Returns whether it did."""
        if self.deregistered:
            return False
        local = list(self.local.values())
        now = time.time()
        r = self._r
        present = await r.exists(instance_key(self.instance_id))
        await r.hset(
            instance_key(self.instance_id),
            mapping={
                "started_at": str(self.started_at),
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "connections": str(len(local)),
            },
        )
        await r.zadd(instances_key(), {self.instance_id: now})
        if self.deregistered:  # the drain deregistered while this renewal was in flight: undo it
            await self._remove_instance(self.instance_id)
            return False
        first, self.beats = self.beats == 0, self.beats + 1
        if present or first:
            # On the first beat every local connection was just added one by one.
            return False
        back_online: list[int] = []
        for conn in local:
            if await self.add(conn):
                back_online.append(conn.user_id)
        if back_online:
            # Not online in Redis any more (reaped after a stall, or Redis restarted empty): the
            # grace may have ended meanwhile and taken them offline while their sockets stayed.
            await _notify_back_online(sorted(set(back_online)))
        return True

    async def _remove_instance(self, instance_id: str) -> list[tuple[str, int]]:
        """Remove every connection of an instance, then the instance itself."""
        r = self._r
        removed: list[tuple[str, int]] = []
        for member in await r.smembers(instance_conns_key(instance_id)):
            uid, _, cid = str(member).partition(":")
            if uid.isdigit() and cid:
                await self._remove_in_user_slot(cid, int(uid))
                removed.append((cid, int(uid)))
        await r.delete(instance_conns_key(instance_id), instance_key(instance_id))
        await r.zrem(instances_key(), instance_id)
        return removed

    async def deregister_instance(self) -> None:
        self.deregistered = True
        self.local.clear()
        await self._remove_instance(self.instance_id)

    async def reap_dead(self) -> list[tuple[str, int]]:
        deadline = time.time() - settings.INSTANCE_TTL_SECONDS
        r = self._r
        dead = await r.zrangebyscore(instances_key(), "-inf", f"({deadline}")
        reaped: list[tuple[str, int]] = []
        for instance_id in dead:
            if instance_id == self.instance_id:
                continue
            lease = key(f"{{inst:{instance_id}}}", "reaping")
            if not await r.set(lease, uuid.uuid4().hex, nx=True, ex=REAP_LEASE_SECONDS):
                continue  # another instance is reaping it
            score = await r.zscore(instances_key(), instance_id)
            if score is None or float(score) >= deadline:
                await r.delete(lease)  # reaped meanwhile, or it came back
                continue
            reaped.extend(await self._remove_instance(instance_id))
            await r.delete(lease)
        return reaped

    async def _load(self, conns: list[tuple[int, str]]) -> list[Connection]:
        if not conns:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for uid, cid in conns:
                pipe.hgetall(conn_key(uid, cid))
            rows = await pipe.execute()
        return [Connection.from_hash(cid, row) for (_, cid), row in zip(conns, rows, strict=True) if row]

    async def user_connections(self, user_id: int) -> list[Connection]:
        conn_ids = await self._r.zrange(user_conns_key(user_id), 0, -1)
        return await self._load([(user_id, cid) for cid in conn_ids])

    async def user_connection_count(self, user_id: int) -> int:
        return int(await redis_client.batched().execute("ZCARD", user_conns_key(user_id)))

    async def all_connections(self) -> list[Connection]:
        conns: list[tuple[int, str]] = []
        for inst in await self._r.zrange(instances_key(), 0, -1):
            for member in await self._r.smembers(instance_conns_key(inst)):
                uid, _, cid = str(member).partition(":")
                if uid.isdigit() and cid:
                    conns.append((int(uid), cid))
        return await self._load(sorted(conns, key=lambda c: c[1]))

    async def instances(self) -> list[Instance]:
        now = time.time()
        result = []
        for inst, score in await self._r.zrange(instances_key(), 0, -1, withscores=True):
            count = await self._r.scard(instance_conns_key(inst))
            result.append(
                Instance(
                    instance_id=inst,
                    connections=int(count),
                    last_heartbeat=float(score),
                    alive=now - float(score) < settings.INSTANCE_TTL_SECONDS,
                )
            )
        return result


class LocalRegistry:
    """Single mode: one instance, so the registry is this process's memory."""

    def __init__(self) -> None:
        self.instance_id: str = settings.INSTANCE_ID
        self.conns: dict[str, Connection] = {}
        self.last_heartbeat = time.time()
        self.online: set[int] = set()
        self.pending: dict[int, float] = {}

    async def add(self, conn: Connection) -> bool:
        self.conns[conn.connection_id] = conn
        self.pending.pop(conn.user_id, None)
        was_online = conn.user_id in self.online
        self.online.add(conn.user_id)
        return not was_online

    async def remove(self, conn_id: str, user_id: int) -> None:
        self.conns.pop(conn_id, None)
        if not any(c.user_id == user_id for c in self.conns.values()):
            self.pending[user_id] = time.time() + settings.PRESENCE_GRACE_SECONDS

    async def due_offline(self) -> list[int]:
        now = time.time()
        out = []
        for uid, when in list(self.pending.items()):
            if when <= now:
                del self.pending[uid]
                if not any(c.user_id == uid for c in self.conns.values()) and uid in self.online:
                    self.online.discard(uid)
                    out.append(uid)
        return out

    async def online_users(self, user_ids: list[int]) -> set[int]:
        return {u for u in user_ids if u in self.online}

    async def touch(self, conn_id: str, user_id: int) -> None:
        if conn_id in self.conns:
            self.conns[conn_id].last_seen = time.time()

    async def heartbeat(self) -> bool:
        self.last_heartbeat = time.time()
        return False

    async def deregister_instance(self) -> None:
        for conn in list(self.conns.values()):
            await self.remove(conn.connection_id, conn.user_id)

    async def reap_dead(self) -> list[tuple[str, int]]:
        return []

    async def user_connections(self, user_id: int) -> list[Connection]:
        return [c for c in self.conns.values() if c.user_id == user_id]

    async def user_connection_count(self, user_id: int) -> int:
        return sum(1 for c in self.conns.values() if c.user_id == user_id)

    async def all_connections(self) -> list[Connection]:
        return sorted(self.conns.values(), key=lambda c: c.connection_id)

    async def instances(self) -> list[Instance]:
        return [Instance(self.instance_id, len(self.conns), self.last_heartbeat, True)]


_registry: Registry | None = None


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = RedisRegistry() if redis_client.cluster_mode() else LocalRegistry()
    return _registry


def user_connection_count_blocking(user_id: int) -> int:
    """For code in worker threads: a plain blocking read."""
    registry = get_registry()
    if isinstance(registry, LocalRegistry):
        return sum(1 for c in list(registry.conns.values()) if c.user_id == user_id)
    return int(redis_client.get_sync().zcard(user_conns_key(user_id)))


def blocking(read: Callable[[Registry], Awaitable[T]]) -> T:
    """Run one registry read from code in a worker thread (DRF views, the admin) on a private
    event loop. Hopping back to the server's loop with async_to_sync from there can deadlock
    while the server shuts that loop down; a private loop cannot."""

    async def run() -> T:
        try:
            return await read(get_registry())
        finally:
            if redis_client.cluster_mode():
                await redis_client.close_async()

    return asyncio.run(run())


BackOnline = Callable[[list[int]], Awaitable[None]]
_back_online: list[BackOnline] = []


def on_back_online(listener: BackOnline) -> BackOnline:
    """Call ``listener`` with the users a heartbeat's write-back found not online in Redis: they
    are online again, as after a first connection (realtime.consumer runs its hooks)."""
    if listener not in _back_online:
        _back_online.append(listener)
    return listener


async def _notify_back_online(user_ids: list[int]) -> None:
    logger.warning("users written back online", extra={"count": len(user_ids)})
    for listener in list(_back_online):
        try:
            await listener(user_ids)
        except Exception as exc:  # noqa: BLE001  # the write-back itself is done; the next one retries nothing
            logger.warning("back-online listener failed", extra={"error": exc.__class__.__name__})


def reset_registry() -> None:
    global _registry
    _registry = None


async def heartbeat_loop() -> None:
    """Renew this instance's heartbeat and reap dead instances (a runtime loop)."""
    registry = get_registry()
    while True:
        try:
            if await registry.heartbeat():
                logger.warning("registry entries were missing; re-registered")
            reaped = await registry.reap_dead()
            if reaped:
                metrics.REGISTRY_REAPS.inc(len(reaped))
                logger.info("reaped connections of dead instances", extra={"count": len(reaped)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.warning("registry heartbeat failed", extra={"error": exc.__class__.__name__})
        await asyncio.sleep(settings.INSTANCE_HEARTBEAT_SECONDS)


async def deregister() -> None:
    """Remove this instance's connections and the instance (a drain hook)."""
    await get_registry().deregister_instance()
