"""channels-redis's pub/sub layer, with publishes that wait for nothing but Redis.

``channels_redis.pubsub`` holds one lock per shard across every ``PUBLISH`` round trip, the same
lock its ``SUBSCRIBE`` takes. On a busy instance every publish then waits for the one before it,
and every new subscription waits behind all of them: in a burst of new users coming online (a
presence publish each), sockets waited more than 3 s for their subscriptions and were closed
with 1011. Here a publish goes out on the shard's pooled connections at once, concurrently with
others and with subscriptions (the pub/sub connection is a connection of its own), and a send to
several groups (``group_send_many``: a presence change to each of a user's conversations) is one
pipeline per shard, one round trip. Subscriptions queued by a burst of connects go out as one
``SUBSCRIBE`` of all their channels (``group_add_many``). Receiving is the library's, except that
an idle receiver waits up to ``RECEIVE_POLL_SECONDS`` for a message instead of waking every
0.1 s to ask again (ten wakeups a second were a quarter of an idle instance's CPU); a message
ends the wait at once, and a connection's failure is met as before (the read raises).

It works on channels-redis 4.3's per-loop layer and shard objects (the version pinned in
requirements/base.txt); tests/realtime/test_pubsub_layer.py fails if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisSingleShardConnection

# Publishes in flight at once per loop: each holds one of the shard pool's connections (100 by
# default, and redis-py refuses past that rather than wait).
PUBLISH_CONCURRENCY = 32
RECEIVE_POLL_SECONDS = 5.0

logger = logging.getLogger("realtime.pubsub_layer")


class _Shard(RedisSingleShardConnection):  # type: ignore[misc]
    async def _do_receiving(self) -> None:
        """The library's receive loop (channels-redis 4.3), with a longer wait per read."""
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=RECEIVE_POLL_SECONDS
                    )
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException:
                logger.exception("Unexpected exception in receive task")
                await asyncio.sleep(1)


class RedisPubSubLayer(RedisPubSubChannelLayer):  # type: ignore[misc]
    def _get_layer(self) -> Any:
        layer = super()._get_layer()
        if not getattr(layer, "own_shards", False):  # new (shards connect on first use)
            layer._shards = [_Shard(shard.host, layer) for shard in layer._shards]
            layer.own_shards = True
        return layer

    async def group_add_many(self, groups: list[str], channel: str) -> None:
        """Add ``channel`` to every group: one ``SUBSCRIBE`` per shard for all of them. redis-py
        writes each command under ``wait_for`` (a task, so a turn of the event loop): one group
        at a time, a busy instance's connects waited one loop turn per subscription queued
        before theirs."""
        layer = self._get_layer()
        if channel not in layer.channels:
            raise RuntimeError("You can only call group_add() on channels that exist in-process.")
        by_shard: dict[Any, list[str]] = {}
        for group in groups:
            group_channel = layer._get_group_channel_name(group)
            layer.groups.setdefault(group_channel, set()).add(channel)
            by_shard.setdefault(layer._get_shard(group_channel), []).append(group_channel)
        for shard, channels in by_shard.items():
            async with shard._lock:
                new = [c for c in dict.fromkeys(channels) if c not in shard._subscribed_to]
                if new:
                    shard._ensure_redis()
                    shard._ensure_receiver()
                    await shard._pubsub.subscribe(*new)
                    shard._subscribed_to.update(new)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self.group_send_many([(group, message)])

    async def group_send_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish each ``(group, message)``: one round trip per shard, however many groups."""
        layer = self._get_layer()
        slots = layer.__dict__.get("publish_slots")
        if slots is None:
            slots = layer.publish_slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)
        async with slots:
            await self._publish(layer, items)

    async def _publish(self, layer: Any, items: list[tuple[str, dict[str, Any]]]) -> None:
        by_shard: dict[Any, list[tuple[str, bytes]]] = {}
        for group, message in items:
            channel = layer._get_group_channel_name(group)
            by_shard.setdefault(layer._get_shard(channel), []).append((channel, self.serialize(message)))
        for shard, pairs in by_shard.items():
            shard._ensure_redis()
            client = shard._redis
            if len(pairs) == 1:
                await client.publish(*pairs[0])
                continue
            pipe = client.pipeline(transaction=False)
            for channel, data in pairs:
                pipe.publish(channel, data)
            await pipe.execute()
