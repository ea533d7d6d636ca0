"""Every event leaves from here, after the transaction that caused it commits.

An event travels through the channel layer to a group (``c.<conversation>`` or ``u.<user>``).
Each instance holds one channel in the groups its local sockets need and fans the frame out to
them (chat/fanout.py), so a frame is encoded once per instance, not once per receiver.

Layer message shape::

    {"type": "fanout", "frame": {...client frame...} | None,
     "exclude_user": int | None, "only_user": int | None, "control": {...} | None}

``control`` changes local routing: ``join``/``leave`` a conversation for a user's sockets,
``disconnect`` a user's sockets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from core.db import defer_to_loop

if TYPE_CHECKING:
    from .models import Conversation, Message

logger = logging.getLogger("chat.events")


def conversation_group(conversation_id: object) -> str:
    return f"c.{conversation_id}"


def user_group(user_id: object) -> str:
    return f"u.{user_id}"


def iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def message_dict(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "conversation_id": str(message.conversation_id),
        "seq": message.seq,
        "sender_id": message.sender_id,
        "body": message.body,
        "client_msg_id": message.client_msg_id,
        "created_at": iso(message.created_at),
    }


def conversation_dict(conversation: Conversation) -> dict[str, Any]:
    participants = [
        {
            "user_id": p.user_id,
            "username": p.user.username,
            "role": p.role,
            "joined_at": iso(p.joined_at),
        }
        for p in conversation.participants.all()
    ]
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "owner_id": conversation.owner_id,
        "created_at": iso(conversation.created_at),
        "last_seq": conversation.last_seq,
        "last_message_at": iso(conversation.last_message_at),
        "participants": participants,
    }


PUBLISH_TIMEOUT_SECONDS = 3.0


async def _send_all(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
    # Bounded: a hung Redis must not hang the request or the socket that caused the event.
    async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
        for group in groups:
            await layer.group_send(group, {**message, "group": group})


def publish(groups: list[str], message: dict[str, Any]) -> None:
    """Send now, to every group in one hop to the event loop. A failure is logged, never
    raised: the cause is already committed, and a receiver that misses it catches up by
    ``resume`` (its socket is closed by the watchdog when this instance's fan-out path is
    broken) or by the hub's catch-up from the database."""
    layer = get_channel_layer()
    if layer is None or not groups:
        return
    # Inside a db_call (a consumer's service call): publish on the event loop as soon as the
    # call returns, before the ack, without blocking this worker thread on a hop to the loop.
    if defer_to_loop(lambda: _publish_on_loop(layer, groups, message)):
        return
    try:
        async_to_sync(_send_all)(layer, groups, message)
    except Exception as exc:
        _publish_failed(groups, exc)


async def _publish_on_loop(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
    try:
        await _send_all(layer, groups, message)
    except Exception as exc:
        _publish_failed(groups, exc)


def _publish_failed(groups: list[str], exc: Exception) -> None:
    from core import metrics

    metrics.LAYER_ERRORS.labels(op="group_send").inc()
    logger.warning("event publish failed", extra={"groups": len(groups), "error": exc.__class__.__name__})


def send_event_on_commit(
    groups: str | list[str],
    frame: dict[str, Any] | None,
    *,
    exclude_user: int | None = None,
    only_user: int | None = None,
    control: dict[str, Any] | None = None,
) -> None:
    targets = [groups] if isinstance(groups, str) else list(groups)
    message = {
        "type": "fanout",
        "frame": frame,
        "exclude_user": exclude_user,
        "only_user": only_user,
        "control": control,
    }
    transaction.on_commit(lambda: publish(targets, message))


# --- One function per event type (schemas are tested in tests/chat/test_events.py) ----------


def message_new(message: Message) -> None:
    send_event_on_commit(
        conversation_group(message.conversation_id), {"type": "message.new", "message": message_dict(message)}
    )


def typing(*, conversation_id: object, user_id: int, state: str) -> None:
    frame = {"type": "typing", "conversation_id": str(conversation_id), "user_id": user_id, "state": state}
    send_event_on_commit(conversation_group(conversation_id), frame, exclude_user=user_id)


def read(*, conversation_id: object, user_id: int, seq: int, read_at: Any) -> None:
    frame = {
        "type": "read",
        "conversation_id": str(conversation_id),
        "user_id": user_id,
        "seq": seq,
        "read_at": iso(read_at),
    }
    send_event_on_commit(conversation_group(conversation_id), frame)


def conversation_joined(*, conversation: Conversation, user_id: int) -> None:
    frame = {"type": "conversation.joined", "conversation": conversation_dict(conversation)}
    control = {
        "op": "join",
        "conversation_id": str(conversation.id),
        "user_id": user_id,
        "last_seq": conversation.last_seq,
    }
    send_event_on_commit(user_group(user_id), frame, control=control)


def conversation_left(*, conversation_id: object, user_id: int) -> None:
    # Sent on the conversation's group: every instance holding the user's sockets is subscribed
    # to it, and it stays ordered with the conversation's other events from the same sender.
    frame = {"type": "conversation.left", "conversation_id": str(conversation_id)}
    control = {"op": "leave", "conversation_id": str(conversation_id), "user_id": user_id}
    send_event_on_commit(conversation_group(conversation_id), frame, only_user=user_id, control=control)
    send_event_on_commit(user_group(user_id), None, control=control)


def disconnect_user(*, user_id: int, code: int) -> None:
    send_event_on_commit(user_group(user_id), None, control={"op": "disconnect", "user_id": user_id, "code": code})


def presence(
    *,
    user_id: int,
    version: int,
    conversation_ids: list[str],
    public: dict[str, Any] | None,
    private: dict[str, Any],
) -> None:
    """The public view to everyone sharing a conversation with the user, the private one to the
    user's own sockets, in one event published to each of the user's conversation groups and
    to the user's group (for a user without conversations). An instance that gets it through
    several of them delivers it once: the hub keeps the last version it delivered per user.
    ``public`` is None (and ``conversation_ids`` empty) when others have nothing to learn."""
    message = {
        "type": "fanout",
        "frame": public,
        "private": private,
        "presence": {"user_id": user_id, "version": version, "conversation_ids": conversation_ids},
    }
    groups = [conversation_group(cid) for cid in conversation_ids] + [user_group(user_id)]
    transaction.on_commit(lambda: publish(groups, message))
