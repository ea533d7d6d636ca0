"""Prometheus metrics of this process (scraped at /metrics, guarded by settings)."""

import asyncio

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("chat_connections", "Open WebSocket connections on this instance")
CONNECTS = Counter("chat_connects_total", "WebSocket connections accepted")
DISCONNECTS = Counter("chat_disconnects_total", "WebSocket connections closed", ["code"])
FRAMES_IN = Counter("chat_frames_in_total", "Client frames received", ["type"])
FRAMES_OUT = Counter("chat_frames_out_total", "Frames sent to clients", ["type"])
MESSAGES_PERSISTED = Counter("chat_messages_persisted_total", "Messages committed to the database")
FANOUT_LATENCY = Histogram(
    "chat_fanout_latency_seconds",
    "From message commit to handing the frame to a local socket",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ERRORS = Counter("chat_errors_total", "Error replies sent, by code", ["code"])
RATE_LIMIT_HITS = Counter("chat_rate_limit_hits_total", "Sends refused by the rate limit")
BUDGET_REFUSALS = Counter("chat_budget_refusals_total", "Requests and frames refused by a rate budget", ["budget"])
LAYER_ERRORS = Counter("chat_channel_layer_errors_total", "Channel layer operation failures", ["op"])
LAYER_RECONNECTS = Counter("chat_channel_layer_reconnects_total", "Fan-out path recoveries")
HEALTH_CHECK_FAILURES = Counter(
    "chat_health_check_failures_total",
    "Failed /api/health checks, by service (database, redis, channel_layer, firestore)",
    ["service"],
)
HANDSHAKES_REFUSED = Counter(
    "chat_handshakes_refused_total", "WebSocket handshakes refused with an HTTP status (draining, shedding)", ["status"]
)
REGISTRY_REAPS = Counter("chat_registry_reaped_connections_total", "Connections reaped from dead instances")
FIRESTORE_QUEUE = Gauge("chat_firestore_queue_length", "Status writes waiting for Firestore")
FIRESTORE_LAG = Gauge("chat_firestore_lag_seconds", "Age of the oldest status write waiting for Firestore")


def observe_fanout(created_at_iso: str) -> None:
    """Record commit-to-local-delivery latency of one message (once per instance)."""
    import datetime as dt

    try:
        created = dt.datetime.fromisoformat(created_at_iso.replace("Z", "+00:00"))
    except ValueError:
        return
    FANOUT_LATENCY.observe(max(0.0, dt.datetime.now(dt.UTC).timestamp() - created.timestamp()))


_frames_out_children: dict[str, object] = {}
# Frames counted since the last flush, by type: one counter increment (and its lock) per type
# and loop turn instead of one per frame per socket on the fan-out path.
_frames_out_pending: dict[str, int] = {}
_flush_scheduled = False


def frame_out(frame_type: str) -> None:
    """FRAMES_OUT.labels(type).inc(), added up within one turn of the event loop."""
    global _flush_scheduled
    pending = _frames_out_pending
    pending[frame_type] = pending.get(frame_type, 0) + 1
    if _flush_scheduled:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush_frames_out()
        return
    _flush_scheduled = True
    loop.call_soon(flush_frames_out)


def flush_frames_out() -> None:
    global _flush_scheduled
    _flush_scheduled = False
    for frame_type, count in _frames_out_pending.items():
        child = _frames_out_children.get(frame_type)
        if child is None:
            child = _frames_out_children[frame_type] = FRAMES_OUT.labels(type=frame_type)
        child.inc(count)  # type: ignore[attr-defined]
    _frames_out_pending.clear()


# Close codes this server sends or a client sends by the book; any other code a client picks
# (1000-4999) is folded into its range, so a client cannot mint label values.
_KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1006, 1008, 1009, 1011, 1012, 4000, 4008, 4401, 4403, 4429})


def close_code_label(code: object) -> str:
    """The ``code`` label of DISCONNECTS for a close code: known ones as is, others bucketed."""
    try:
        number = int(str(code))
    except ValueError:
        return "other"
    if number in _KNOWN_CLOSE_CODES:
        return str(number)
    if 1000 <= number < 5000:
        return f"{number // 1000}xxx"
    return "other"
