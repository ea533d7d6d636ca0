"""Caps on live sockets across the cluster: per user (``WS_MAX_SOCKETS_PER_USER``) and,
when set, per client address (``WS_MAX_SOCKETS_PER_ADDRESS``).

The per-user count is the connection registry's. The per-address count has its own sorted
set per address (``p:{a:<address>}:socks``, member ``<user id>:<connection id>``, scored by
when it was admitted), checked and added to in one script at the handshake and removed from at
disconnect. A member whose connection the registry no longer holds (its instance died and was
reaped) is pruned when the cap is reached, so a dead instance does not hold an address's
sockets for ever. Concurrent connects on several instances may pass either cap by a few: soft
caps, there to stop one account or one host from holding hundreds of sockets, not exact quotas.

The client address is the ASGI scope's client (the peer, or what the server took from proxy
headers itself), or, when that peer is in ``TRUSTED_PROXIES``, the last address of
``X-Forwarded-For`` that is not a trusted proxy. IPv6 addresses count by their /64, what one
host usually holds.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from functools import cache
from typing import Any

from django.conf import settings

from core import redis_client
from core.redis_client import key
from realtime.protocol import CloseCode
from realtime.registry import conn_key, get_registry

logger = logging.getLogger("chat.ws")

CLOSE_TOO_MANY_SOCKETS = CloseCode.TOO_MANY_SOCKETS
# A member younger than this may belong to a connect still on its way into the registry.
PRUNE_AFTER_SECONDS = 30.0
# An address nobody connected from for a day loses its set (a soft cap can forget).
ADDRESS_TTL_SECONDS = 86400
ADDRESS_MAX_CHARS = 64


async def over_cap(user_id: int) -> bool:
    try:
        count = await get_registry().user_connection_count(user_id)
    except Exception as exc:  # noqa: BLE001
        # The connect path meets the same registry right after and handles its faults.
        logger.debug("socket cap not checked", extra={"error": exc.__class__.__name__})
        return False
    return bool(count >= settings.WS_MAX_SOCKETS_PER_USER)


# --- the client address ---------------------------------------------------------------------


@cache
def _trusted_networks(proxies: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_trusted(text: str) -> bool:
    ip = _ip(text)
    networks = _trusted_networks(tuple(settings.TRUSTED_PROXIES))
    return ip is not None and any(ip in net for net in networks)


def client_address(scope: Mapping[str, Any]) -> str:
    """The address a socket counts against (see the module's docstring); empty when unknown."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    address = peer
    if peer and settings.TRUSTED_PROXIES and _is_trusted(peer):
        hops: list[str] = []
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                hops += [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            address = hop
            if not _is_trusted(hop):
                break
    ip = _ip(address)
    if ip is None:
        return address[:ADDRESS_MAX_CHARS]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# --- the per-address count ------------------------------------------------------------------


def address_key(address: str) -> str:
    return key(f"{{a:{address}}}", "socks")


# KEYS: the address's set. ARGV: member, now, cap, ttl. Returns -1 when admitted (added), else
# the count that refused it.
_ADMIT_LUA = """
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then return n end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return -1
"""

# Single mode: address -> members, in this process.
_local: dict[str, set[str]] = defaultdict(set)


def _member(user_id: int, connection_id: str) -> str:
    return f"{user_id}:{connection_id}"


async def admit_address(address: str, user_id: int, connection_id: str) -> bool:
    """Count this socket against its address; False when the address is at its cap (nothing
    counted then). Always True when no cap is set or the address is unknown."""
    cap = settings.WS_MAX_SOCKETS_PER_ADDRESS
    if not cap or not address:
        return True
    member = _member(user_id, connection_id)
    if not redis_client.cluster_mode():
        members = _local[address]
        if len(members) >= cap:
            return False
        members.add(member)
        return True
    try:
        r = redis_client.get_async()
        name = address_key(address)
        for attempt in range(2):
            refused = int(
                await redis_client.batched().execute(
                    "EVAL", _ADMIT_LUA, 1, name, member, time.time(), cap, ADDRESS_TTL_SECONDS
                )
            )
            if refused < 0:
                return True
            if attempt == 0 and not await _prune(r, name):
                break
    except Exception as exc:  # noqa: BLE001
        # The connect path meets the same Redis right after and handles its faults.
        logger.debug("address cap not checked", extra={"error": exc.__class__.__name__})
        return True
    logger.info("address over its socket cap", extra={"count": refused})
    return False


async def _prune(r: Any, name: str) -> int:
    """Remove members whose connection the registry no longer holds; how many it removed."""
    old = await r.zrangebyscore(name, "-inf", time.time() - PRUNE_AFTER_SECONDS)
    parsed = [(m, *str(m).partition(":")[::2]) for m in old]
    candidates = [(m, int(uid), cid) for m, uid, cid in parsed if uid.isdigit() and cid]
    if not candidates:
        return 0
    async with r.pipeline(transaction=False) as pipe:
        for _, uid, cid in candidates:
            pipe.exists(conn_key(uid, cid))
        alive = await pipe.execute()
    gone = [m for (m, _, _), live in zip(candidates, alive, strict=True) if not live]
    if gone:
        await r.zrem(name, *gone)
    return len(gone)


async def release_address(address: str, user_id: int, connection_id: str) -> None:
    """The socket is gone: it no longer counts against its address."""
    if not settings.WS_MAX_SOCKETS_PER_ADDRESS or not address:
        return
    member = _member(user_id, connection_id)
    if not redis_client.cluster_mode():
        members = _local.get(address)
        if members is not None:
            members.discard(member)
            if not members:
                del _local[address]
        return
    try:
        await redis_client.batched().execute("ZREM", address_key(address), member)
    except Exception as exc:  # noqa: BLE001
        # Pruned once the cap is reached (the registry no longer holds the connection).
        logger.warning("address release failed", extra={"error": exc.__class__.__name__})
