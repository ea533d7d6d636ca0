"""One presenter per shape. HTTP views, socket handlers and events render through these, so the
same object never has two shapes on two paths."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Conversation, Message, Participant


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def message(row: Message) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "conversation_id": str(row.conversation_id),
        "seq": row.seq,
        "sender_id": row.sender_id,
        "body": row.body,
        "client_msg_id": row.client_msg_id,
        "created_at": iso(row.created_at),
    }


def conversation(row: Conversation) -> dict[str, Any]:
    """Participants come from ``participants__user`` prefetched by the selector."""
    participants = [
        {
            "user_id": p.user_id,
            "username": p.user.username,
            "role": p.role,
            "joined_at": iso(p.joined_at),
        }
        for p in row.participants.all()
    ]
    return {
        "id": str(row.id),
        "title": row.title,
        "owner_id": row.owner_id,
        "created_at": iso(row.created_at),
        "last_seq": row.last_seq,
        "last_message_at": iso(row.last_message_at),
        "participants": participants,
    }


def read_receipt(*, conversation_id: object, user_id: int, seq: int, read_at: dt.datetime | None) -> dict[str, Any]:
    """A participant's read marker: the ``read`` event, its socket ack and the HTTP answer."""
    return {"conversation_id": str(conversation_id), "user_id": user_id, "seq": seq, "read_at": iso(read_at)}


def receipt(row: Participant) -> dict[str, Any]:
    """One entry of ``GET .../read/`` (the conversation is the request's)."""
    return {"user_id": row.user_id, "seq": row.last_read_seq, "read_at": iso(row.last_read_at)}
