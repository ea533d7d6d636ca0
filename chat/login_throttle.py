"""Brute-force protection for every password check: a token bucket per account (failed
attempts) and one per client address (all attempts, since each costs a password hash).

An attempt takes a token from both buckets before the password is checked; a successful one
gives the account's token back, so a user who logs in often is never locked out by it, while
a guesser runs dry after the burst and then gets one try per refill interval (429 with
``Retry-After``). In cluster mode the buckets live in Redis, so the budget is shared by every
instance; in single mode they live in this process.
"""

from __future__ import annotations

import hashlib
import threading
import time

from django.conf import settings
from redis.exceptions import RedisError

from core import metrics, redis_client
from core.errors import RateLimited, Unavailable

from .ratelimit import BUCKET_LUA

_local_lock = threading.Lock()
_local: dict[str, tuple[float, float]] = {}


def _take(bucket: str, rate: float, burst: int, cost: float) -> tuple[bool, float]:
    now = time.time()
    if redis_client.cluster_mode():
        try:
            allowed, wait = redis_client.get_sync().eval(BUCKET_LUA, 1, bucket, rate, burst, now, cost)
        except RedisError:
            # Fail closed: without the shared budget a guesser could spread over instances.
            raise Unavailable("Sign-in is briefly unavailable.", retry_after=1.0) from None
        return bool(int(allowed)), float(wait)
    with _local_lock:
        tokens, ts = _local.get(bucket, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - ts) * rate)
        if tokens >= cost:
            _local[bucket] = (min(float(burst), tokens - cost), now)
            return True, 0.0
        _local[bucket] = (tokens, now)
        return False, (cost - tokens) / rate


def _account_bucket(username: str) -> str:
    # Hashed: bounded key length, and no user-chosen text in Redis keys.
    digest = hashlib.sha256(username.strip().casefold().encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return redis_client.key("rl", "login", "acct", digest)


def _address_bucket(address: str) -> str:
    return redis_client.key("rl", "login", "addr", address or "unknown")


def attempt(*, username: str, address: str) -> None:
    """Take one attempt from the account's and the address's budgets, or raise 429."""
    checks = [
        (_address_bucket(address), settings.LOGIN_ADDRESS_PER_SECOND, settings.LOGIN_ADDRESS_BURST),
        (_account_bucket(username), settings.LOGIN_ACCOUNT_PER_SECOND, settings.LOGIN_ACCOUNT_BURST),
    ]
    for bucket, rate, burst in checks:
        ok, wait = _take(bucket, rate, burst, 1)
        if not ok:
            metrics.RATE_LIMIT_HITS.inc()
            raise RateLimited(
                f"Too many sign-in attempts; retry in {max(1, int(wait + 0.999))} s.", retry_after=round(wait, 3)
            )


def succeeded(*, username: str) -> None:
    """A correct password gives the account's attempt back."""
    _take(_account_bucket(username), settings.LOGIN_ACCOUNT_PER_SECOND, settings.LOGIN_ACCOUNT_BURST, -1)


def reset_local() -> None:
    with _local_lock:
        _local.clear()
