"""A Channels layer on Redis Cluster sharded pub/sub, after channels_redis's
``RedisPubSubChannelLayer``.

Every channel (from ``new_channel``) and every group is one shard channel: ``SPUBLISH`` goes to
the master that owns the channel's slot, and only that master carries it, so the cost of a
message does not grow with the number of shards (classic ``PUBLISH`` is copied to every node).

Per process and event loop the layer keeps one pub/sub connection per master, opened on first
use. Subscriptions are written to a master's connection in one batch (one ``SSUBSCRIBE`` per
slot, as Redis requires) and waited for until the master confirms them.

The slot map changes under a running layer: a master dies and its replica takes over, a master
hangs, an operator migrates slots. The layer notices through a dropped connection, a PING left
unanswered, a ``sunsubscribe`` pushed by the server when a slot moves away, a ``MOVED`` reply, or
its periodic look at the slot map; it then refreshes the map and subscribes every channel again
on the master that now owns it, retrying with backoff until that succeeds. Messages published
meanwhile are lost (pub/sub keeps nothing), so once it has resubscribed it calls the listeners
registered with :meth:`RedisClusterChannelLayer.add_resubscribe_listener`; an application uses
them to catch up from its own storage.

Configuration, under ``CHANNEL_LAYERS[alias]["CONFIG"]``:

``hosts``
    Startup nodes: URLs (``redis://[user[:password]@]host:port``, ``rediss://`` for TLS) or
    ``{"host": ..., "port": ...}`` dicts. Any node of the cluster, or a configuration endpoint.
``prefix``
    Prefix of every shard channel name (default ``"asgi"``).
``cluster_kwargs``
    Extra keyword arguments for ``redis.asyncio.cluster.RedisCluster`` (``username``,
    ``password``, ``ssl_ca_certs``, ``address_remap``, ...); they also apply to the pub/sub
    connections.
``subscribe_timeout``
    Seconds to wait for a master to confirm a subscription (default 5).
``ping_interval``
    Seconds between PINGs on each pub/sub connection; two unanswered ones drop it (default 2).
``topology_interval``
    Seconds between looks at the slot map (default 2).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import random
import time
import types
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlparse

import msgpack
from channels.layers import BaseChannelLayer
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import ResponseError

logger = logging.getLogger("channels_redis_cluster")

ResubscribeListener = Callable[[], Awaitable[None]]

_MAX_BACKOFF_SECONDS = 2.0


def parse_hosts(hosts: Iterable[str | dict[str, Any]] | None) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Startup nodes and the connection options found in the URLs (user, password, TLS)."""
    nodes: list[tuple[str, int]] = []
    options: dict[str, Any] = {}
    if isinstance(hosts, str | bytes):
        raise ValueError("hosts must be a list of URLs or dicts, even for one node")
    for host in hosts or ["redis://localhost:6379"]:
        if isinstance(host, dict):
            nodes.append((str(host.get("host", "localhost")), int(host.get("port", 6379))))
            continue
        url = urlparse(host)
        if url.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported scheme {url.scheme!r} (use redis:// or rediss://)")
        nodes.append((url.hostname or "localhost", url.port or 6379))
        if url.username:
            options["username"] = unquote(url.username)
        if url.password:
            options["password"] = unquote(url.password)
        if url.scheme == "rediss":
            options["ssl"] = True
    return nodes, options


def _spawn(coro: Any, name: str) -> asyncio.Task[Any]:
    """A background task in a fresh context: it must not carry the log context (request or
    socket ids) of whichever caller happened to start it."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())


class RedisClusterChannelLayer(BaseChannelLayer):
    """The layer Channels talks to; one :class:`_LoopLayer` per event loop does the work (an
    asyncio connection must never be used from another loop)."""

    extensions = ["groups", "flush"]

    def __init__(
        self,
        hosts: Iterable[str | dict[str, Any]] | None = None,
        prefix: str = "asgi",
        *,
        cluster_kwargs: dict[str, Any] | None = None,
        subscribe_timeout: float = 5.0,
        ping_interval: float = 2.0,
        topology_interval: float = 2.0,
        expiry: int = 60,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.prefix = prefix
        self.startup_nodes, url_options = parse_hosts(hosts)
        self.cluster_kwargs = {**url_options, **(cluster_kwargs or {})}
        self.subscribe_timeout = subscribe_timeout
        self.ping_interval = ping_interval
        self.topology_interval = topology_interval
        self._listeners: list[ResubscribeListener] = []
        self._layers: dict[asyncio.AbstractEventLoop, _LoopLayer] = {}

    # --- listeners ------------------------------------------------------------------------------

    def add_resubscribe_listener(self, callback: ResubscribeListener) -> None:
        """``await callback()`` runs each time the layer has resubscribed after a fault (a failover,
        a slot move, a lost connection): messages published in between were not delivered."""
        if callback not in self._listeners:
            self._listeners.append(callback)

    def remove_resubscribe_listener(self, callback: ResubscribeListener) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    # --- serialization (msgpack, as channels_redis) ----------------------------------------------

    def serialize(self, message: dict[str, Any]) -> bytes:
        return bytes(msgpack.packb(message, use_bin_type=True))

    def deserialize(self, data: bytes) -> dict[str, Any]:
        message: dict[str, Any] = msgpack.unpackb(data, raw=False)
        return message

    def group_channel(self, group: str) -> str:
        """The shard channel of a group: ``{prefix}:g:{group}``."""
        return f"{self.prefix}:g:{group}"

    def channel_shard(self, channel: str) -> str:
        """The shard channel of a channel: ``{prefix}:c:{channel}`` (one ACL channel pattern,
        ``&{prefix}:*``, covers both kinds)."""
        return f"{self.prefix}:c:{channel}"

    # --- channel layer API --------------------------------------------------------------------

    def _layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(self)
            self._close_with(loop)
        return layer

    def _close_with(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the loop's connections when the loop closes (as channels_redis does)."""
        original = loop.close

        def close(this: asyncio.AbstractEventLoop) -> None:
            layer = self._layers.pop(loop, None)
            if layer is not None and not loop.is_running():
                loop.run_until_complete(layer.flush())
            loop.close = original  # type: ignore[method-assign]
            original()

        loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]

    async def new_channel(self, prefix: str = "specific.") -> str:
        channel = f"{prefix}{uuid.uuid4().hex}"
        await self._layer().add_channel(self.channel_shard(channel))
        return channel

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        await self._layer().publish(self.channel_shard(channel), self.serialize(message))

    async def receive(self, channel: str) -> dict[str, Any]:
        self.require_valid_channel_name(channel)
        return self.deserialize(await self._layer().receive(self.channel_shard(channel)))

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._layer().group_add(self.group_channel(group), self.channel_shard(channel))

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._layer().group_discard(self.group_channel(group), self.channel_shard(channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        await self._layer().publish(self.group_channel(group), self.serialize(message))

    async def flush(self) -> None:
        """Forget every channel and group and close the connections; usable again afterwards."""
        await self._layer().flush()

    async def close(self) -> None:
        layer = self._layers.pop(asyncio.get_running_loop(), None)
        if layer is not None:
            await layer.flush()

    # --- introspection (tests, health) ----------------------------------------------------------

    def subscriptions(self) -> dict[str, str]:
        """Shard channel -> ``host:port`` of the master it is subscribed on, for this loop."""
        return dict(self._layer().placement)


class _NodeSubscriber:
    """The pub/sub connection to one master, with its reader and its PING keepalive."""

    def __init__(self, layer: _LoopLayer, node: ClusterNode) -> None:
        self.layer = layer
        self.name = node.name
        kwargs = dict(node.connection_kwargs)
        # Blocking reads (no socket timeout) and no silent reconnect: a lost connection must
        # reach the layer, which resubscribes everywhere and tells its listeners.
        kwargs.update(socket_timeout=None, retry=Retry(NoBackoff(), 0), health_check_interval=0, decode_responses=False)
        kwargs.pop("event_dispatcher", None)
        self.conn: AbstractConnection = node.connection_class(**kwargs)
        self.channels: set[str] = set()
        self.unsubscribing: set[str] = set()
        self.last_pong = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        timeout = self.layer.outer.subscribe_timeout
        async with asyncio.timeout(timeout):
            await self.conn.connect()
        self.tasks = [
            _spawn(self._read_loop(), f"layer-read-{self.name}"),
            _spawn(self._ping_loop(), f"layer-ping-{self.name}"),
        ]

    async def _write(self, commands: list[tuple[Any, ...]]) -> None:
        async with self._write_lock, asyncio.timeout(self.layer.outer.subscribe_timeout):
            await self.conn.send_packed_command(self.conn.pack_commands(commands), check_health=False)

    async def subscribe(self, shards: list[str]) -> None:
        """One write for all of them: one SSUBSCRIBE per slot (a command spans one slot)."""
        by_slot: dict[int, list[str]] = defaultdict(list)
        for shard in shards:
            by_slot[key_slot(shard.encode())].append(shard)
        self.channels.update(shards)
        self.unsubscribing.difference_update(shards)
        await self._write([("SSUBSCRIBE", *names) for names in by_slot.values()])

    async def unsubscribe(self, shards: list[str]) -> None:
        self.channels.difference_update(shards)
        self.unsubscribing.update(shards)
        by_slot: dict[int, list[str]] = defaultdict(list)
        for shard in shards:
            by_slot[key_slot(shard.encode())].append(shard)
        await self._write([("SUNSUBSCRIBE", *names) for names in by_slot.values()])

    async def _read_loop(self) -> None:
        while True:
            try:
                # push_request: on RESP3 pub/sub messages are pushes, handed back here.
                reply = await self.conn.read_response(timeout=math.inf, disconnect_on_error=False, push_request=True)
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                # MOVED (the slot is elsewhere now) or any refusal of a subscription.
                self.layer.schedule_resync(f"{type(exc).__name__} from {self.name}")
                continue
            except Exception as exc:
                self.layer.node_failed(self, type(exc).__name__)
                return
            if reply == b"PONG":  # RESP3 answers PING in pub/sub mode as to any PING
                self.last_pong = time.monotonic()
                continue
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"smessage":
                self.layer.deliver(reply[1].decode(), reply[2])
            elif kind == b"ssubscribe":
                self.layer.confirmed(self, reply[1].decode())
            elif kind == b"sunsubscribe":
                shard = reply[1].decode()
                if shard in self.unsubscribing:
                    self.unsubscribing.discard(shard)
                else:
                    # Pushed by the server: the slot moved to another master.
                    self.channels.discard(shard)
                    self.layer.lost(self, shard)
            elif kind == b"pong":
                self.last_pong = time.monotonic()

    async def _ping_loop(self) -> None:
        interval = self.layer.outer.ping_interval
        while True:
            sent = time.monotonic()
            try:
                await self._write([("PING",)])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.layer.node_failed(self, type(exc).__name__)
                return
            await asyncio.sleep(interval)
            if self.last_pong < sent and time.monotonic() - sent > 2 * interval:
                self.layer.node_failed(self, "ping timeout")
                return

    async def close(self) -> None:
        self.closed = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for task in self.tasks:
            if task is not current:
                try:
                    await task
                except BaseException:  # noqa: S110 - cancelled or failed; it is being dropped
                    pass
        try:
            await self.conn.disconnect(nowait=True)
        except Exception:  # noqa: S110 - the connection is dead already
            pass


class _LoopLayer:
    """The state of the layer in one event loop."""

    def __init__(self, outer: RedisClusterChannelLayer) -> None:
        self.outer = outer
        self.client: RedisCluster | None = None
        self.channels: dict[str, asyncio.Queue[bytes]] = {}
        self.groups: dict[str, set[str]] = {}
        self.nodes: dict[str, _NodeSubscriber] = {}
        # shard channel -> the master it was subscribed on, and whether that master confirmed.
        self.placement: dict[str, str] = {}
        self.ready: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._client_lock = asyncio.Lock()
        self._dirty = False
        self._resync_task: asyncio.Task[None] | None = None
        self._topology_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # --- connections ----------------------------------------------------------------------------

    async def _client(self) -> RedisCluster:
        if self.client is not None:
            return self.client
        async with self._client_lock:
            if self.client is None:
                kwargs: dict[str, Any] = {
                    "socket_timeout": 2.0,
                    "socket_connect_timeout": 2.0,
                    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                    **self.outer.cluster_kwargs,
                }
                nodes = [ClusterNode(host, port) for host, port in self.outer.startup_nodes]
                client = RedisCluster(startup_nodes=nodes, **kwargs)
                await client.initialize()
                self.client = client
                self._topology_task = _spawn(self._topology_loop(), "layer-topology")
        return self.client

    async def _node(self, node: ClusterNode) -> _NodeSubscriber:
        sub = self.nodes.get(node.name)
        if sub is None:
            sub = _NodeSubscriber(self, node)
            await sub.start()
            self.nodes[node.name] = sub
        return sub

    def _wanted(self) -> set[str]:
        return set(self.channels) | set(self.groups)

    # --- subscribing ----------------------------------------------------------------------------

    async def _place(self, shards: list[str]) -> None:
        """Subscribe ``shards`` on the masters that own them, one batch per master. Holds _lock."""
        assert self.client is not None
        by_node: dict[str, list[str]] = defaultdict(list)
        owners: dict[str, ClusterNode] = {}
        for shard in shards:
            node = self.client.get_node_from_key(shard)
            if node is None:
                raise LookupError(f"no master for the slot of {shard}")
            owners[node.name] = node
            by_node[node.name].append(shard)
        for name, group in by_node.items():
            for shard in group:
                self.placement[shard] = name
                self.ready.setdefault(shard, asyncio.Event()).clear()
            try:
                sub = await self._node(owners[name])
                await sub.subscribe(group)
            except Exception as exc:
                for shard in group:
                    self.placement.pop(shard, None)
                self.schedule_resync(f"subscribe on {name} failed: {type(exc).__name__}")

    async def _subscribe(self, shard: str) -> None:
        await self._client()
        event = self.ready.setdefault(shard, asyncio.Event())
        if shard not in self.placement:
            async with self._lock:
                if shard not in self.placement and shard in self._wanted():
                    await self._place([shard])
        async with asyncio.timeout(self.outer.subscribe_timeout):
            await event.wait()

    async def _unsubscribe(self, shard: str) -> None:
        async with self._lock:
            if shard in self._wanted():
                return
            self.ready.pop(shard, None)
            name = self.placement.pop(shard, None)
            sub = self.nodes.get(name) if name else None
            if sub is not None:
                try:
                    await sub.unsubscribe([shard])
                except Exception as exc:
                    self.node_failed(sub, type(exc).__name__)

    # --- the API, per loop ----------------------------------------------------------------------

    async def add_channel(self, channel: str) -> None:
        self.channels.setdefault(channel, asyncio.Queue())
        await self._subscribe(channel)

    async def publish(self, shard: str, data: bytes) -> None:
        client = await self._client()
        await client.spublish(shard, data)

    async def receive(self, channel: str) -> bytes:
        if channel not in self.channels:
            await self.add_channel(channel)
        queue = self.channels[channel]
        try:
            return await queue.get()
        except (asyncio.CancelledError, TimeoutError, GeneratorExit):
            # As channels_redis: a cancelled receive means the consumer is leaving.
            if self.channels.get(channel) is queue:
                del self.channels[channel]
                for members in self.groups.values():
                    members.discard(channel)
                try:
                    await self._unsubscribe(channel)
                except BaseException:
                    logger.exception("unsubscribing a channel failed")
            raise

    async def group_add(self, shard: str, channel: str) -> None:
        if channel not in self.channels:
            raise RuntimeError(
                "You can only call group_add() on channels that exist in-process.\n"
                "Consumers are encouraged to use the common pattern:\n"
                "   self.channel_layer.group_add(group, self.channel_name)"
            )
        self.groups.setdefault(shard, set()).add(channel)
        await self._subscribe(shard)

    async def group_discard(self, shard: str, channel: str) -> None:
        members = self.groups.get(shard)
        if not members or channel not in members:
            return
        members.discard(channel)
        if not members:
            del self.groups[shard]
            await self._unsubscribe(shard)

    async def flush(self) -> None:
        for task in (self._resync_task, self._topology_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: S110 - cancelled
                    pass
        self._resync_task = self._topology_task = None
        self.channels = {}
        self.groups = {}
        self.placement = {}
        self.ready = {}
        for sub in list(self.nodes.values()):
            await sub.close()
        self.nodes = {}
        if self.client is not None:
            client, self.client = self.client, None
            await client.aclose()

    # --- events from the node readers -------------------------------------------------------------

    def deliver(self, shard: str, data: bytes) -> None:
        queue = self.channels.get(shard)
        if queue is not None:
            queue.put_nowait(data)
            return
        for channel in self.groups.get(shard, ()):
            member = self.channels.get(channel)
            if member is not None:
                member.put_nowait(data)

    def confirmed(self, sub: _NodeSubscriber, shard: str) -> None:
        if self.placement.get(shard) == sub.name and shard in self.ready:
            self.ready[shard].set()

    def lost(self, sub: _NodeSubscriber, shard: str) -> None:
        if self.placement.get(shard) == sub.name:
            del self.placement[shard]
            if shard in self.ready:
                self.ready[shard].clear()
            self.schedule_resync(f"sunsubscribe from {sub.name}")

    def node_failed(self, sub: _NodeSubscriber, reason: str) -> None:
        if sub.closed or self.nodes.get(sub.name) is not sub:
            return
        del self.nodes[sub.name]
        for shard, name in list(self.placement.items()):
            if name == sub.name:
                del self.placement[shard]
                if shard in self.ready:
                    self.ready[shard].clear()
        task = _spawn(sub.close(), f"layer-close-{sub.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self.schedule_resync(f"connection to {sub.name} lost: {reason}")

    # --- recovery -------------------------------------------------------------------------------

    def schedule_resync(self, reason: str) -> None:
        self._dirty = True
        if self._resync_task is None or self._resync_task.done():
            logger.warning("redis cluster layer resubscribing", extra={"reason": reason})
            self._resync_task = _spawn(self._resync_loop(), "layer-resync")
        else:
            logger.debug("redis cluster layer resubscribe pending", extra={"reason": reason})

    async def _resync_loop(self) -> None:
        delay = 0.05
        attempts = 0
        while self._dirty:
            self._dirty = False
            attempts += 1
            try:
                async with asyncio.timeout(self.outer.subscribe_timeout):
                    await self._resync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._dirty = True
                logger.warning(
                    "redis cluster layer resubscribe failed", extra={"attempt": attempts, "error": type(exc).__name__}
                )
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
        logger.info("redis cluster layer resubscribed", extra={"attempts": attempts, "channels": len(self.placement)})
        for listener in list(self.outer._listeners):
            try:
                await listener()
            except Exception:
                logger.exception("resubscribe listener failed")

    async def _resync_once(self) -> None:
        client = await self._client()
        await client.nodes_manager.initialize()
        async with self._lock:
            masters = {node.name for node in client.get_primaries()}
            for name, sub in list(self.nodes.items()):
                if name not in masters:
                    self.node_failed(sub, "no longer a master")
            self._dirty = False  # node_failed above is part of this pass
            moves: list[str] = []
            stale: dict[str, list[str]] = defaultdict(list)
            for shard in self._wanted():
                node = client.get_node_from_key(shard)
                current = self.placement.get(shard)
                if node is not None and current == node.name:
                    continue
                if current is not None:
                    stale[current].append(shard)
                    del self.placement[shard]
                moves.append(shard)
            for name, shards in stale.items():
                if name in self.nodes:
                    try:
                        await self.nodes[name].unsubscribe(shards)
                    except Exception as exc:
                        self.node_failed(self.nodes[name], type(exc).__name__)
            await self._place(moves)
        if self._dirty:
            raise RuntimeError("a subscription failed while resubscribing")
        waits = [self.ready[s].wait() for s in self._wanted() if s in self.ready]
        await asyncio.gather(*waits)
        if self._dirty:
            raise RuntimeError("the slot map changed again while resubscribing")

    async def _topology_loop(self) -> None:
        """The slot map, looked at regularly: a hung master's connection may never fail, but its
        slots move to its replica."""
        while True:
            await asyncio.sleep(self.outer.topology_interval)
            client = self.client
            if client is None or not self.placement:
                continue
            try:
                await client.nodes_manager.initialize()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("redis cluster layer topology check failed", extra={"error": type(exc).__name__})
                continue
            for shard, name in list(self.placement.items()):
                node = client.get_node_from_key(shard)
                if node is None or node.name != name:
                    self.schedule_resync(f"slot of {shard} moved")
                    break
