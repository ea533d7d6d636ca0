"""Redis clients shared by the whole process.

One synchronous client (thread-safe pool) for code that runs in threads (DRF views, services),
and one asyncio client per event loop for consumers and background tasks, as channels_redis
does: an asyncio connection must never be used from a loop other than its own.
Both find the master through Sentinel when ``REDIS_SENTINELS`` is set, and speak the cluster
protocol (slot map, MOVED/ASK, topology refresh with backoff) when ``REDIS_CLUSTER`` is on;
``REDIS_HOST`` is then only where the slot map is first read from (any node, or a managed
service's configuration endpoint): commands go to the node addresses the cluster announces.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from django.conf import settings
from redis import exceptions as redis_exceptions
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff
from redis.retry import Retry

from core.redis_batch import Batcher

logger = logging.getLogger("chat.redis")
T = TypeVar("T")

# Short timeouts: a hung Redis must surface as an error quickly, never hang a request.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0

# What a caller gets: the same commands on one Redis, behind Sentinel and on a cluster.
SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = aioredis.Redis | aiocluster.RedisCluster

# Errors that mean "Redis cannot serve this now" (a failover, a cluster that lost slots, a demoted
# primary answering READONLY): callers answer 503 unavailable and the client retries.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.ClusterError,
    redis_exceptions.TryAgainError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.RedisClusterException,
)

# Connections per asyncio client (per process): a burst that wants more commands in flight (a
# reconnect storm's connects and resumes) waits up to SOCKET_TIMEOUT for a free one. redis-py's
# default pool refuses at once (MaxConnectionsError), and each refusal became a 503.
MAX_CONNECTIONS = 100

# How long a call that can wait out a failover (a send's rate limit, a ticket) keeps retrying:
# Sentinel's down-after plus its election, or a managed Redis's endpoint switch.
FAILOVER_WAIT_SECONDS = 2.0
# Errors worth retrying on a fresh connection: the server went away or hung, was demoted to a
# replica (READONLY; a fresh connection finds the new master through Sentinel, or through the
# endpoint's DNS on a managed service), or the cluster is moving a slot or electing a master.
RETRYABLE = UNAVAILABLE_ERRORS

_sync_client: SyncClient | None = None
_sync_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = weakref.WeakKeyDictionary()
_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher] = weakref.WeakKeyDictionary()


def cluster_mode() -> bool:
    return bool(settings.CHAT_MODE == "cluster")


def redis_cluster() -> bool:
    """True when Redis is a Redis Cluster (``REDIS_CLUSTER``)."""
    return bool(settings.REDIS.get("cluster"))


def key(*parts: object) -> str:
    """A key under the configured prefix: ``key("conn", id)`` -> ``chat:conn:<id>``."""
    return ":".join([settings.REDIS_KEY_PREFIX, *(str(p) for p in parts)])


def _common_kwargs() -> dict[str, Any]:
    cfg: dict[str, Any] = settings.REDIS
    kwargs = {
        "username": cfg.get("username") or None,
        "password": cfg["password"],
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 10,
        "decode_responses": True,
    }
    if not cfg.get("cluster"):
        kwargs["db"] = cfg["db"]  # a cluster has database 0 only
        # redis-py's default retries ten times, each up to SOCKET_TIMEOUT: about 25 s against a
        # frozen master. One quick retry on a fresh connection (a pooled connection the server
        # closed); longer waits are the caller's choice (with_failover_retry). A cluster client
        # has its own retry (_cluster_retry).
        kwargs["retry"] = Retry(ExponentialBackoff(cap=0.2, base=0.05), 1)
        kwargs["retry_on_error"] = [
            redis_exceptions.ConnectionError,
            redis_exceptions.TimeoutError,
            redis_exceptions.ReadOnlyError,
        ]
    if cfg["ssl"] and cfg.get("ssl_ca_certs") and not cfg["sentinels"]:
        kwargs["ssl_ca_certs"] = cfg["ssl_ca_certs"]
    return kwargs


def _cluster_kwargs() -> dict[str, Any]:
    """A failover takes the cluster a few seconds: commands retry with backoff (the slot map is
    read again after a MOVED or a lost node) for about that long, then fail as unavailable."""
    cfg: dict[str, Any] = settings.REDIS
    return {
        "host": cfg["host"],
        "port": cfg["port"],
        "ssl": cfg["ssl"],
        **_common_kwargs(),
        "require_full_coverage": False,
    }


def _cluster_retry(retry_class: Any) -> Any:
    return retry_class(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 5)


def get_sync() -> SyncClient:
    global _sync_client
    if _sync_client is None:
        with _sync_lock:
            if _sync_client is None:
                cfg: dict[str, Any] = settings.REDIS
                if cfg.get("cluster"):
                    _sync_client = redis.cluster.RedisCluster(**_cluster_kwargs(), retry=_cluster_retry(Retry))
                elif cfg["sentinels"]:
                    from redis.sentinel import Sentinel

                    sentinel = Sentinel(cfg["sentinels"], socket_timeout=SOCKET_TIMEOUT)
                    _sync_client = sentinel.master_for(cfg["sentinel_master"], **_common_kwargs())
                else:
                    _sync_client = redis.Redis(host=cfg["host"], port=cfg["port"], ssl=cfg["ssl"], **_common_kwargs())
    return _sync_client


def get_async() -> AsyncClient:
    """The asyncio client of the running event loop."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        cfg: dict[str, Any] = settings.REDIS
        if cfg.get("cluster"):
            from redis.asyncio.retry import Retry as AsyncRetry

            client = aiocluster.RedisCluster(**_cluster_kwargs(), retry=_cluster_retry(AsyncRetry))
        elif cfg["sentinels"]:
            from redis.asyncio.sentinel import Sentinel as AioSentinel

            sentinel = AioSentinel(cfg["sentinels"], socket_timeout=SOCKET_TIMEOUT)
            client = sentinel.master_for(
                cfg["sentinel_master"],
                connection_pool_class=_blocking_sentinel_pool(),
                max_connections=MAX_CONNECTIONS,
                timeout=SOCKET_TIMEOUT,
                **_common_kwargs(),
            )
        else:
            pool = WaitingConnectionPool(
                host=cfg["host"],
                port=cfg["port"],
                connection_class=aioredis.SSLConnection if cfg["ssl"] else aioredis.Connection,
                max_connections=MAX_CONNECTIONS,
                timeout=SOCKET_TIMEOUT,
                **_common_kwargs(),
            )
            client = aioredis.Redis.from_pool(pool)
        _async_clients[loop] = client
    return client


class WaitingConnectionPool(aioredis.BlockingConnectionPool):
    """``BlockingConnectionPool``'s bound (callers wait up to ``timeout`` for a free connection
    instead of failing), without its cost when nobody has to wait: its condition, timer and
    notify around every command were about a tenth of a returning connect's CPU. A caller takes
    the plain pool's path while a connection is free and no one waits before it."""

    _waiting = 0

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self._waiting or not self.can_get_connection():
            self._waiting += 1
            try:
                return await super().get_connection()  # type: ignore[no-untyped-call]
            finally:
                self._waiting -= 1
        return await aioredis.ConnectionPool.get_connection(self)

    async def release(self, connection: Any) -> None:
        if self._waiting:
            await super().release(connection)  # wakes a waiter
            return
        await aioredis.ConnectionPool.release(self, connection)
        if self._waiting:  # one started waiting while the release awaited
            async with self._condition:
                self._condition.notify()


@functools.cache
def _blocking_sentinel_pool() -> type:
    """Sentinel's pool (it finds the master) that waits for a free connection, as the one-Redis
    client's pool does."""
    from redis.asyncio.sentinel import SentinelConnectionPool

    class WaitingSentinelConnectionPool(SentinelConnectionPool, WaitingConnectionPool):
        pass

    return WaitingSentinelConnectionPool


def batched() -> Batcher:
    """The running loop's batcher: commands submitted in one loop turn share a round trip
    (core/redis_batch.py), on the same client as ``get_async``."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    client = get_async()
    if batcher is None or batcher.client is not client:
        batcher = _batchers[loop] = Batcher(client)
    return batcher


async def close_async() -> None:
    """Close the running loop's client (a private loop that is about to end)."""
    _batchers.pop(asyncio.get_running_loop(), None)
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def reset_clients() -> None:
    """Forget every client (tests point the process at a new Redis)."""
    global _sync_client
    with _sync_lock:
        if _sync_client is not None:
            _sync_client.close()
        _sync_client = None
    _async_clients.clear()
    _batchers.clear()


def _log_retry(exc: BaseException, attempt: int) -> None:
    logger.info("redis call failed; retrying", extra={"error": exc.__class__.__name__, "attempt": attempt})


def with_failover_retry(call: Callable[[SyncClient], T], *, wait: float = FAILOVER_WAIT_SECONDS) -> T:
    """``call(client)``, retried on a Redis fault for up to ``wait`` seconds (a failover about to
    end succeeds instead of failing); the last error is raised after that."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        client = get_sync()
        try:
            return call(client)
        except RETRYABLE as exc:
            attempt += 1
            if time.monotonic() >= deadline:
                raise
            _log_retry(exc, attempt)
            if isinstance(exc, redis_exceptions.ReadOnlyError) and isinstance(client, redis.Redis):
                # A master demoted in place: pooled connections would go on hitting the replica.
                client.connection_pool.disconnect()
            time.sleep(min(0.1 * attempt, 0.5, max(0.0, deadline - time.monotonic())))


async def with_failover_retry_async(
    call: Callable[[AsyncClient], Awaitable[T]], *, wait: float = FAILOVER_WAIT_SECONDS
) -> T:
    """The asyncio form of :func:`with_failover_retry`."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        client = get_async()
        try:
            return await call(client)
        except RETRYABLE as exc:
            attempt += 1
            if time.monotonic() >= deadline:
                raise
            _log_retry(exc, attempt)
            if isinstance(exc, redis_exceptions.ReadOnlyError) and isinstance(client, aioredis.Redis):
                await client.connection_pool.disconnect()
            await asyncio.sleep(min(0.1 * attempt, 0.5, max(0.0, deadline - time.monotonic())))
