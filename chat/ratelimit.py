"""Per-user token bucket for sends, shared by HTTP and WebSocket.

In cluster mode the bucket lives in Redis (one Lua script, so concurrent instances cannot both
take the last token); in single mode it lives in this process.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

from core import redis_client
from core.errors import RateLimited

# KEYS[1] bucket hash; ARGV: rate per second, burst, now (seconds, float), cost.
# Returns {allowed (0/1), seconds until a token is available (string)}.
_BUCKET_LUA = """
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
  tokens = tokens - cost
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


def _take_local(bucket: str, rate: float, burst: int, now: float) -> tuple[bool, float]:
    with _local_lock:
        tokens, ts = _local_buckets.get(bucket, (float(burst), now))
        tokens = min(burst, tokens + max(0.0, now - ts) * rate)
        if tokens >= 1:
            _local_buckets[bucket] = (tokens - 1, now)
            return True, 0.0
        _local_buckets[bucket] = (tokens, now)
        return False, (1 - tokens) / rate


def check_send_rate(*, user_id: int) -> None:
    """Take one token from the user's send bucket, or raise 429 with the time to wait."""
    rate, burst = settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST
    now = time.time()
    bucket = redis_client.key("rl", "send", user_id)
    if redis_client.cluster_mode():
        # Waits out a short failover (then 503): the send goes through rather than failing.
        allowed, wait = redis_client.with_failover_retry(
            lambda client: client.eval(_BUCKET_LUA, 1, bucket, rate, burst, now, 1)  # type: ignore[arg-type,return-value]
        )
        ok, retry_after = bool(int(allowed)), float(wait)
    else:
        ok, retry_after = _take_local(bucket, rate, burst, now)
    if not ok:
        from core import metrics

        metrics.RATE_LIMIT_HITS.inc()
        raise RateLimited(f"Sending too fast; retry in {retry_after:.1f} s.", retry_after=round(retry_after, 3))


def reset_local() -> None:
    with _local_lock:
        _local_buckets.clear()
