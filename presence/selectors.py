"""Reads of the connection registry for the operator endpoints and commands."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from asgiref.sync import async_to_sync

from chat.events import iso

from .registry import Connection, Instance, get_registry


def _ts(value: float) -> str | None:
    import datetime as dt

    return iso(dt.datetime.fromtimestamp(value, tz=dt.UTC)) if value else None


def connection_dict(conn: Connection) -> dict[str, Any]:
    return {
        "connection_id": conn.connection_id,
        "user_id": conn.user_id,
        "instance_id": conn.instance_id,
        "connected_at": _ts(conn.connected_at),
        "last_seen": _ts(conn.last_seen),
        "remote_addr": conn.remote_addr,
        "user_agent": conn.user_agent,
    }


def instance_dict(inst: Instance) -> dict[str, Any]:
    return {
        "instance_id": inst.instance_id,
        "connections": inst.connections,
        "last_heartbeat": _ts(inst.last_heartbeat),
        "heartbeat_age_s": round(time.time() - inst.last_heartbeat, 1),
        "alive": inst.alive,
    }


def user_connections(*, user_id: int) -> list[dict[str, Any]]:
    conns = async_to_sync(get_registry().user_connections)(user_id)
    return [connection_dict(c) for c in sorted(conns, key=lambda c: c.connected_at)]


def cluster_connections() -> dict[str, Any]:
    conns = async_to_sync(get_registry().all_connections)()
    by_instance = Counter(c.instance_id for c in conns)
    return {
        "total": len(conns),
        "by_instance": dict(sorted(by_instance.items())),
        "users_online": len({c.user_id for c in conns}),
        "connections": [connection_dict(c) for c in conns],
    }


def instances() -> list[dict[str, Any]]:
    return [instance_dict(i) for i in async_to_sync(get_registry().instances)()]
