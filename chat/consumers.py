"""The WebSocket interface at /ws/chat/: one socket per device, all the user's conversations.

An interface only: each handler parses a frame, calls the same service as the HTTP view and
renders with the same presenter. The socket machinery (handshake, routing, registry, queue,
close codes) is realtime's; other apps add their frame handlers to the same table
(``@ChatConsumer.handler("type")``) and react to a user's first connection.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from core.db import db_call
from core.errors import Invalid
from realtime.consumer import RealtimeConsumer
from realtime.protocol import encode

from . import presenters, schemas, selectors, services
from . import topics as topic_cache

assert schemas  # the frames' schemas are registered with the protocol on import


class ChatConsumer(RealtimeConsumer):
    async def topics(self) -> dict[str, int]:
        """The user's conversations and the latest seq of each (from Redis; chat/topics.py)."""
        return await topic_cache.conversation_seqs(self.user_id, _load_conversation_seqs, _load_latest_seqs)


_load_latest_seqs = db_call(selectors.latest_seqs)
_conversation_seqs = db_call(selectors.conversation_seqs)


async def _load_conversation_seqs(user_id: int) -> dict[str, int]:
    return await _conversation_seqs(user_id=user_id)


def _required(data: dict[str, Any], name: str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise Invalid.field(name, "This field is required.")
    return value


@ChatConsumer.handler("message.send")
async def on_message_send(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
    """Persist, then ack with the message; every participant gets ``message.new``."""
    result = await db_call(services.message_send)(
        sender_id=consumer.user_id,
        conversation_id=_required(data, "conversation_id"),
        body=data.get("body"),
        client_msg_id=data.get("client_msg_id"),
    )
    return {"message": presenters.message(result.message), "repeat": result.repeat}


@ChatConsumer.handler("typing")
async def on_typing(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
    """Broadcast a typing state to the other participants."""
    broadcast = await db_call(services.typing_set)(
        user_id=consumer.user_id, conversation_id=_required(data, "conversation_id"), state=data.get("state")
    )
    return {"broadcast": broadcast}


@ChatConsumer.handler("read")
async def on_read(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
    """Move the read marker forward; participants get ``read``."""
    cid = _required(data, "conversation_id")
    result = await db_call(services.read_mark)(user_id=consumer.user_id, conversation_id=cid, seq=data.get("seq"))
    return presenters.read_receipt(
        conversation_id=cid, user_id=consumer.user_id, seq=result.seq, read_at=result.read_at
    )


@ChatConsumer.handler("resume")
async def on_resume(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
    """Send every message after each cursor, in seq order, then ack with where each one ends."""
    cursors = data.get("cursors")
    if not isinstance(cursors, dict) or len(cursors) > settings.RESUME_MAX_CONVERSATIONS:
        raise Invalid.field("cursors", "Must be an object of conversation id to last seen seq.")
    parsed: dict[str, int] = {}
    for cid, seq in cursors.items():
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise Invalid.field("cursors", f"The seq for {cid[:40]!r} must be a non-negative whole number.")
        parsed[str(selectors.parse_conversation_id(cid))] = seq
    session = consumer.session
    assert session is not None
    limit = settings.RESUME_MAX_PER_CONVERSATION
    resumed: dict[str, int] = {}
    for cid, after in parsed.items():
        # Held from before the query: a live message arriving meanwhile waits for the rows.
        session.resuming[cid] = []
        try:
            # Participation is checked now, at the time of the action.
            rows = await db_call(selectors.resume_messages)(
                user_id=consumer.user_id, conversation_id=cid, after_seq=after, limit=limit + 1
            )
            last = after
            for row in rows[:limit]:
                await session.drain_below(session.queue_limit // 2)
                session.push(encode({"type": "message.new", "message": presenters.message(row)}), "message.new")
                last = row.seq
            if len(rows) > limit:
                session.reply({"type": "resume.truncated", "conversation_id": cid, "next_seq": last + 1})
            session.sent_seq[cid] = max(session.sent_seq.get(cid, 0), last)
        finally:
            held = session.resuming.pop(cid, [])
        # Live messages that arrived meanwhile, unless truncated (the client pages over HTTP).
        if len(rows) <= limit:
            for seq, text in sorted(held):
                session.push_sequenced(cid, seq, text)
        resumed[cid] = session.sent_seq.get(cid, after)
    return {"resumed": resumed}
