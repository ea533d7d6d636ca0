"""Per-user token buckets for every write and every frame type, shared by HTTP and WebSocket,
and the suppression of broadcasts that would repeat the last one.

In cluster mode a bucket lives in Redis (one Lua script, so concurrent instances cannot both
take the last token, and a user's sockets on every instance share one budget); in single mode
it lives in this process. Each budget is a setting ``RATE_LIMIT_<NAME>`` like ``"2/s burst 10"``
(parsed into ``settings.RATE_LIMITS``); sends keep ``RATE_LIMIT_MESSAGES``.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

from core import redis_client
from core.errors import RateLimited

# KEYS[1] bucket hash; ARGV: rate per second, burst, now (seconds, float), cost (negative: a
# refund, as the login throttle gives a correct password its attempt back).
# Returns {allowed (0/1), seconds until the cost is available (string)}.
BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = math.min(burst, tokens - cost)
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

_local_lock = threading.Lock()
_local_buckets: dict[str, tuple[float, float]] = {}
_local_last: dict[str, tuple[str, float]] = {}

# The budgets besides sends; each reads its rate from settings.RATE_LIMITS[name], parsed from
# the setting RATE_LIMIT_<NAME>. The HTTP and socket forms of one action share a budget.
BUDGETS = ("typing", "read", "status", "presence_sync", "ping", "resume", "ticket", "conversation")

_WHAT = {
    "send": "Sending",
    "typing": "Typing updates",
    "read": "Read markers",
    "status": "Status changes",
    "presence_sync": "Presence syncs",
    "ping": "Pings",
    "resume": "Resumes",
    "ticket": "Ticket requests",
    "conversation": "Conversation changes",
}


def _take_local(bucket: str, rate: float, burst: int, now: float) -> tuple[bool, float]:
    with _local_lock:
        tokens, ts = _local_buckets.get(bucket, (float(burst), now))
        tokens = min(burst, tokens + max(0.0, now - ts) * rate)
        if tokens >= 1:
            _local_buckets[bucket] = (tokens - 1, now)
            return True, 0.0
        _local_buckets[bucket] = (tokens, now)
        return False, (1 - tokens) / rate


def _rate(budget: str) -> tuple[float, int]:
    if budget == "send":
        return float(settings.RATE_LIMIT_PER_SECOND), int(settings.RATE_LIMIT_BURST)
    rate, burst = settings.RATE_LIMITS[budget]
    return float(rate), int(burst)


def _refuse(budget: str, retry_after: float) -> RateLimited:
    from core import metrics

    if budget == "send":
        metrics.RATE_LIMIT_HITS.inc()
    metrics.BUDGET_REFUSALS.labels(budget=budget).inc()
    return RateLimited(
        f"{_WHAT[budget]} too fast; retry in {retry_after:.1f} s.", retry_after=round(max(retry_after, 0.001), 3)
    )


def check(budget: str, *, user_id: int) -> None:
    """Take one token from the user's bucket of ``budget``, or raise 429 with the time to wait.
    For code running in a thread (services); the socket's own frames use :func:`acheck`."""
    rate, burst = _rate(budget)
    now = time.time()
    bucket = redis_client.key("rl", budget, user_id)
    if redis_client.cluster_mode():
        # Waits out a short failover (then 503): the send goes through rather than failing.
        allowed, wait = redis_client.with_failover_retry(
            lambda client: client.eval(BUCKET_LUA, 1, bucket, rate, burst, now, 1)
        )
        ok, retry_after = bool(int(allowed)), float(wait)
    else:
        ok, retry_after = _take_local(bucket, rate, burst, now)
    if not ok:
        raise _refuse(budget, retry_after)


async def acheck(budget: str, *, user_id: int) -> None:
    """:func:`check` on the event loop, through the loop's asyncio Redis client."""
    rate, burst = _rate(budget)
    now = time.time()
    bucket = redis_client.key("rl", budget, user_id)
    if redis_client.cluster_mode():
        allowed, wait = await redis_client.batched().execute("EVAL", BUCKET_LUA, 1, bucket, rate, burst, now, 1)
        ok, retry_after = bool(int(allowed)), float(wait)
    else:
        ok, retry_after = _take_local(bucket, rate, burst, now)
    if not ok:
        raise _refuse(budget, retry_after)


def check_send_rate(*, user_id: int) -> None:
    """Take one token from the user's send bucket, or raise 429 with the time to wait."""
    check("send", user_id=user_id)


# KEYS[1] the last broadcast state; ARGV: state, lifetime in ms. Returns 1 when the state differs
# from the last one (and records it), 0 when it repeats it. A repeat does not extend the
# lifetime, so a state that is still true is broadcast again once the lifetime has passed.
_CHANGED_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def changed(*parts: object, state: str, lifetime_seconds: float) -> bool:
    """Whether ``state`` differs from the last one recorded under ``parts`` in the last
    ``lifetime_seconds``; records it when it does. Callers broadcast only what changed."""
    key = redis_client.key("last", *parts)
    lifetime_ms = max(1, int(lifetime_seconds * 1000))
    if redis_client.cluster_mode():
        return bool(int(redis_client.get_sync().eval(_CHANGED_LUA, 1, key, state, lifetime_ms)))
    now = time.monotonic()
    with _local_lock:
        last = _local_last.get(key)
        if last is not None and last[0] == state and last[1] > now:
            return False
        if len(_local_last) > 100_000:
            _local_last.clear()
        _local_last[key] = (state, now + lifetime_ms / 1000)
        return True


def reset_local() -> None:
    with _local_lock:
        _local_buckets.clear()
        _local_last.clear()
