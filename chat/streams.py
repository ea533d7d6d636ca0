"""Conversations as ordered streams for the router: missed ``message.new`` frames by seq."""

from __future__ import annotations

from typing import Any

from core.db import db_call

from . import presenters, selectors


async def fetch_messages(conversation_id: str, after_seq: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
    rows = await db_call(selectors.messages_after)(conversation_id=conversation_id, after_seq=after_seq, limit=limit)
    return [(row.seq, {"type": "message.new", "message": presenters.message(row)}) for row in rows]
