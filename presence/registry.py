"""The connection registry: who is connected, where, since when.

Groups cannot be listed, so this is the truth about connections across instances. Keys (under
``REDIS_KEY_PREFIX``)::

    {p}:conn:{conn_id}          hash  user_id, instance_id, channel, connected_at, last_seen, addr, ua
    {p}:user:{user_id}:conns    zset  conn_id -> last_seen
    {p}:inst:{instance}:conns   set   conn_id
    {p}:instances               zset  instance_id -> last heartbeat (unix seconds)
    {p}:inst:{instance}         hash  started_at, host, pid, connections
    {p}:presence:online         set   user ids shown online (a connection, or within the grace)
    {p}:presence:pending        zset  user_id -> when to go offline (last connection closed)

Each instance renews its heartbeat several times per INSTANCE_TTL_SECONDS. Any living instance
reaps an instance whose heartbeat is older than the TTL: one Lua script claims it (ZREM) and
deletes its connections in the same step, so a dead instance is reaped exactly once.

Presence is derived here, in the same atomic steps: closing a user's last connection (or
reaping it) schedules the user in ``presence:pending`` for PRESENCE_GRACE_SECONDS later; a new
connection cancels that. Any living instance takes due users off the set (``due_offline``),
so the grace period outlives the instance that started it.
In single mode (no Redis) the same interface is kept in this process.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from django.conf import settings

from core import redis_client
from core.redis_client import key


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
    async def heartbeat(self, local: list[Connection]) -> bool: ...
    async def deregister_instance(self) -> None: ...
    async def reap_dead(self) -> list[tuple[str, int]]: ...
    async def user_connections(self, user_id: int) -> list[Connection]: ...
    async def all_connections(self) -> list[Connection]: ...
    async def instances(self) -> list[Instance]: ...
    async def user_connection_count(self, user_id: int) -> int: ...


# KEYS: instances zset. ARGV: prefix, instance id, deadline (score below it means dead),
# when the users left without a connection go offline.
# Returns the user ids of the reaped connections, paired with their ids: {conn, user, ...}.
_REAP_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if (not score) or tonumber(score) >= tonumber(ARGV[3]) then return {} end
redis.call('ZREM', KEYS[1], ARGV[2])
local p = ARGV[1]
local inst_conns = p .. ':inst:' .. ARGV[2] .. ':conns'
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', inst_conns)) do
  local ckey = p .. ':conn:' .. cid
  local uid = redis.call('HGET', ckey, 'user_id')
  redis.call('DEL', ckey)
  if uid then
    local ukey = p .. ':user:' .. uid .. ':conns'
    redis.call('ZREM', ukey, cid)
    if redis.call('ZCARD', ukey) == 0 then
      redis.call('ZADD', p .. ':presence:pending', ARGV[4], uid)
    end
    table.insert(out, cid)
    table.insert(out, uid)
  end
end
redis.call('DEL', inst_conns, p .. ':inst:' .. ARGV[2])
return out
"""


# KEYS: conn hash, user conns, instance conns, pending, online.
# ARGV: conn id, user id, last seen, then the hash's field/value pairs.
_ADD_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return redis.call('SADD', KEYS[5], ARGV[2])
"""

# KEYS: conn hash, user conns, instance conns, pending. ARGV: conn id, user id, offline at.
_REMOVE_LUA = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
end
return 1
"""

# KEYS: pending, online. ARGV: prefix, now. Users whose grace ended with no connection left go
# offline (returned); users who came back are just taken off the pending set.
_DUE_LUA = """
local out = {}
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 500)) do
  redis.call('ZREM', KEYS[1], uid)
  if redis.call('ZCARD', ARGV[1] .. ':user:' .. uid .. ':conns') == 0 then
    if redis.call('SREM', KEYS[2], uid) == 1 then table.insert(out, uid) end
  end
end
return out
"""


class RedisRegistry:
    def __init__(self) -> None:
        self.instance_id: str = settings.INSTANCE_ID
        self.started_at = time.time()
        self.beats = 0

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
        added = await self._r.eval(
            _ADD_LUA,
            5,
            key("conn", conn.connection_id),
            key("user", conn.user_id, "conns"),
            key("inst", conn.instance_id, "conns"),
            key("presence", "pending"),
            key("presence", "online"),
            conn.connection_id,
            conn.user_id,
            conn.last_seen,
            *mapping,
        )
        return bool(int(added))

    async def remove(self, conn_id: str, user_id: int) -> None:
        await self._r.eval(
            _REMOVE_LUA,
            4,
            key("conn", conn_id),
            key("user", user_id, "conns"),
            key("inst", self.instance_id, "conns"),
            key("presence", "pending"),
            conn_id,
            user_id,
            time.time() + settings.PRESENCE_GRACE_SECONDS,
        )

    async def due_offline(self) -> list[int]:
        out = await self._r.eval(
            _DUE_LUA, 2, key("presence", "pending"), key("presence", "online"), settings.REDIS_KEY_PREFIX, time.time()
        )
        return [int(u) for u in out]

    async def online_users(self, user_ids: list[int]) -> set[int]:
        if not user_ids:
            return set()
        flags = await self._r.smismember(key("presence", "online"), [str(u) for u in user_ids])
        return {u for u, flag in zip(user_ids, flags, strict=True) if flag}

    async def touch(self, conn_id: str, user_id: int) -> None:
        now = time.time()
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(key("conn", conn_id), "last_seen", str(now))
            pipe.zadd(key("user", user_id, "conns"), {conn_id: now}, xx=True)
            await pipe.execute()

    async def heartbeat(self, local: list[Connection]) -> bool:
        """Renew this instance's heartbeat. When Redis lost our entry (it restarted empty, or we
        were reaped after a long stall), write every local connection back. Returns whether it did."""
        now = time.time()
        r = self._r
        present = await r.exists(key("inst", self.instance_id))
        async with r.pipeline(transaction=True) as pipe:
            pipe.zadd(key("instances"), {self.instance_id: now})
            pipe.hset(
                key("inst", self.instance_id),
                mapping={
                    "started_at": str(self.started_at),
                    "host": socket.gethostname(),
                    "pid": str(os.getpid()),
                    "connections": str(len(local)),
                },
            )
            await pipe.execute()
        first, self.beats = self.beats == 0, self.beats + 1
        if present or first:
            # On the first beat every local connection was just added one by one.
            return False
        for conn in local:
            await self.add(conn)
        return True

    async def deregister_instance(self) -> None:
        r = self._r
        conn_ids = await r.smembers(key("inst", self.instance_id, "conns"))
        async with r.pipeline(transaction=True) as pipe:
            for cid in conn_ids:
                pipe.hget(key("conn", cid), "user_id")
            users = await pipe.execute() if conn_ids else []
        for cid, uid in zip(conn_ids, users, strict=True):
            if uid:
                await self.remove(cid, int(uid))
        async with r.pipeline(transaction=True) as pipe:
            pipe.delete(key("inst", self.instance_id, "conns"), key("inst", self.instance_id))
            pipe.zrem(key("instances"), self.instance_id)
            await pipe.execute()

    async def reap_dead(self) -> list[tuple[str, int]]:
        deadline = time.time() - settings.INSTANCE_TTL_SECONDS
        r = self._r
        dead = await r.zrangebyscore(key("instances"), "-inf", f"({deadline}")
        reaped: list[tuple[str, int]] = []
        for instance_id in dead:
            if instance_id == self.instance_id:
                continue
            out = await r.eval(
                _REAP_LUA,
                1,
                key("instances"),
                settings.REDIS_KEY_PREFIX,
                instance_id,
                deadline,
                time.time() + settings.PRESENCE_GRACE_SECONDS,
            )
            reaped.extend((out[i], int(out[i + 1])) for i in range(0, len(out), 2))
        return reaped

    async def _load(self, conn_ids: list[str]) -> list[Connection]:
        if not conn_ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for cid in conn_ids:
                pipe.hgetall(key("conn", cid))
            rows = await pipe.execute()
        return [Connection.from_hash(cid, row) for cid, row in zip(conn_ids, rows, strict=True) if row]

    async def user_connections(self, user_id: int) -> list[Connection]:
        return await self._load(list(await self._r.zrange(key("user", user_id, "conns"), 0, -1)))

    async def user_connection_count(self, user_id: int) -> int:
        return int(await self._r.zcard(key("user", user_id, "conns")))

    async def all_connections(self) -> list[Connection]:
        conn_ids: list[str] = []
        for inst in await self._r.zrange(key("instances"), 0, -1):
            conn_ids.extend(await self._r.smembers(key("inst", inst, "conns")))
        return await self._load(sorted(conn_ids))

    async def instances(self) -> list[Instance]:
        now = time.time()
        result = []
        for inst, score in await self._r.zrange(key("instances"), 0, -1, withscores=True):
            count = await self._r.scard(key("inst", inst, "conns"))
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

    async def heartbeat(self, local: list[Connection]) -> bool:
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
    """For code in worker threads: a plain blocking read. (Hopping back to the event loop
    with async_to_sync from there can deadlock while the server shuts the loop down.)"""
    registry = get_registry()
    if isinstance(registry, LocalRegistry):
        return sum(1 for c in list(registry.conns.values()) if c.user_id == user_id)
    return int(redis_client.get_sync().zcard(key("user", user_id, "conns")))


def reset_registry() -> None:
    global _registry
    _registry = None
