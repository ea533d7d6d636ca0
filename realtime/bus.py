"""The bus between instances: how an envelope published on one instance reaches the others.

``Bus`` is the interface the router and the publishers use; ``ChannelLayerBus`` carries it on a
Channels layer (channels-redis pub/sub or core on one Redis or behind Sentinel, the in-process
layer in single mode, the sharded pub/sub layer on Redis Cluster). Each instance holds one
channel on it and subscribes that channel to the groups its local sockets need.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from channels.layers import get_channel_layer

from core import metrics

logger = logging.getLogger("realtime.bus")

OP_TIMEOUT_SECONDS = 3.0
PUBLISH_TIMEOUT_SECONDS = 3.0


class Bus(Protocol):
    channel_name: str | None

    async def open(self, prefix: str) -> str: ...
    async def publish(self, groups: list[str], message: dict[str, Any]) -> None: ...
    async def subscribe(self, group: str) -> None: ...
    async def subscribe_many(self, groups: list[str]) -> None: ...
    async def unsubscribe(self, group: str) -> None: ...
    async def receive(self) -> dict[str, Any]: ...
    async def probe(self, group: str, timeout: float) -> float: ...
    def add_resubscribe_listener(self, listener: Callable[[], Awaitable[None]]) -> None: ...


class ChannelLayerBus:
    """The bus on the configured Channels layer (``CHANNEL_LAYERS["default"]``)."""

    def __init__(self) -> None:
        self.layer: Any = None
        self.channel_name: str | None = None
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._listeners: list[Callable[[], Awaitable[None]]] = []

    async def open(self, prefix: str) -> str:
        self.layer = get_channel_layer()
        self.channel_name = await self.layer.new_channel(prefix)
        add = getattr(self.layer, "add_resubscribe_listener", None)
        if add is not None:  # a layer that resubscribes by itself says so (Redis Cluster)
            for listener in self._listeners:
                add(listener)
        return self.channel_name

    def add_resubscribe_listener(self, listener: Callable[[], Awaitable[None]]) -> None:
        self._listeners.append(listener)
        add = getattr(self.layer, "add_resubscribe_listener", None)
        if add is not None:
            add(listener)

    async def publish(self, groups: list[str], message: dict[str, Any]) -> None:
        """Send ``message`` to every group, bounded: a hung Redis must not hang the caller."""
        layer = self.layer or get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS has no default layer"
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            many = getattr(layer, "group_send_many", None)
            if many is not None and len(groups) > 1:  # one round trip (realtime/pubsub_layer.py)
                await many([(group, {**message, "group": group}) for group in groups])
                return
            for group in groups:
                await layer.group_send(group, {**message, "group": group})

    async def subscribe(self, group: str) -> None:
        # No task per subscribe (as wait_for would make): one that needs no wait runs inline,
        # so a queue of them is drained in one turn of the loop.
        async with asyncio.timeout(OP_TIMEOUT_SECONDS):
            await self.layer.group_add(group, self.channel_name)

    async def subscribe_many(self, groups: list[str]) -> None:
        """Subscribe to all ``groups``: one command per shard where the layer can (a connect
        burst's queue), else one after another."""
        many = getattr(self.layer, "group_add_many", None)
        async with asyncio.timeout(OP_TIMEOUT_SECONDS):
            if many is not None:
                await many(groups, self.channel_name)
                return
            for group in groups:
                await self.layer.group_add(group, self.channel_name)

    async def unsubscribe(self, group: str) -> None:
        try:
            async with asyncio.timeout(OP_TIMEOUT_SECONDS):
                await self.layer.group_discard(group, self.channel_name)
        except Exception:  # noqa: BLE001
            metrics.LAYER_ERRORS.labels(op="group_discard").inc()

    async def receive(self) -> dict[str, Any]:
        """The next message for this instance; probe replies are consumed here."""
        while True:
            message: dict[str, Any] = await self.layer.receive(self.channel_name)
            if message.get("type") != "probe":
                return message
            waiter = self._probes.pop(message.get("id", ""), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def probe(self, group: str, timeout: float) -> float:
        """A real round trip through group delivery back to this instance (``group`` is its
        own). Returns the latency in seconds; raises on timeout or a layer error."""
        loop = asyncio.get_running_loop()
        probe_id = uuid.uuid4().hex
        waiter: asyncio.Future[None] = loop.create_future()
        self._probes[probe_id] = waiter
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await self.layer.group_send(group, {"type": "probe", "id": probe_id, "group": group})
                await waiter
        finally:
            self._probes.pop(probe_id, None)
        return loop.time() - started


bus = ChannelLayerBus()
