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
import threading
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from django.conf import settings
from redis import exceptions as redis_exceptions
from redis.backoff import ExponentialWithJitterBackoff

# Short timeouts: a hung Redis must surface as an error quickly, never hang a request.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0

# What a caller gets: the same commands on one Redis, behind Sentinel and on a cluster.
SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = aioredis.Redis | aiocluster.RedisCluster

# Errors that mean "Redis cannot serve this now" (a failover, a cluster that lost slots, a demoted
# primary answering READONLY): callers answer 503 unavailable and the client retries.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.ClusterError,
    redis_exceptions.TryAgainError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.RedisClusterException,
)

_sync_client: SyncClient | None = None
_sync_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = weakref.WeakKeyDictionary()


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
                    from redis.retry import Retry

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
            client = sentinel.master_for(cfg["sentinel_master"], **_common_kwargs())
        else:
            client = aioredis.Redis(host=cfg["host"], port=cfg["port"], ssl=cfg["ssl"], **_common_kwargs())
        _async_clients[loop] = client
    return client


async def close_async() -> None:
    """Close the running loop's client (a private loop that is about to end)."""
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
