"""Presence's part of the socket: its frame handlers and its reaction to a first connection.

Registered on chat's consumer (``presence`` builds on ``chat``; ``chat`` never imports it)."""

from __future__ import annotations

from typing import Any

from chat.consumers import ChatConsumer
from core.db import db_call

from . import online, schemas, selectors, services

assert schemas  # the frames' schemas are registered with the protocol on import


@ChatConsumer.handler("status.set")
async def on_status_set(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
    """Set the chosen status; everyone sharing a conversation gets ``presence``."""
    presence = await db_call(services.status_set)(
        user_id=consumer.user_id, status=data.get("status"), text=data.get("text")
    )
    return {"presence": presence}


@ChatConsumer.handler("presence.sync")
async def on_presence_sync(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
    """The presence of everyone sharing a conversation, as ``GET /api/presence/``."""
    results = await db_call(selectors.presence_snapshot)(user_id=consumer.user_id)
    return {"results": results}


@ChatConsumer.on_first_connection
async def went_online(user_id: int, conversation_ids: list[str]) -> None:
    """The registry found the user offline: its database and Firestore writes are batched."""
    online.batcher.put(user_id, conversation_ids)
