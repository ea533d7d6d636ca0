"""Every event of chat leaves from here, after the transaction that caused it commits.

An event is a typed envelope (realtime.protocol) published on the bus to the group of its
audience: a conversation (``c.<id>``) or a user (``u.<id>``). Each instance holds one channel in
the groups its local sockets need and its router fans the frame out to them, so a frame is
encoded once per instance, not once per receiver. ``control`` changes routing on the instances:
``join``/``leave`` a conversation for a user's sockets, ``disconnect`` them.

Each event type has a schema (chat/schemas.py) and a test that the frames built here match it
(tests/chat/test_events.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction

from core import metrics
from core.db import defer_to_loop
from realtime.bus import bus
from realtime.protocol import Audience, Control, Envelope, conversation_group, envelope, group_of, user_group

from . import presenters

if TYPE_CHECKING:
    from .models import Conversation, Message

logger = logging.getLogger("chat.events")


def publish(groups: list[str], message: Envelope | dict[str, Any]) -> None:
    """Send now, to every group in one hop to the event loop. A failure is logged, never
    raised: the cause is already committed, and a receiver that misses it catches up by
    ``resume`` (its socket is closed by the watchdog when this instance's fan-out path is
    broken) or by the router's catch-up from the database."""
    if not groups:
        return
    payload = dict(message)
    # Inside a db_call (a consumer's service call): publish on the event loop as soon as the
    # call returns, before the ack, without blocking this worker thread on a hop to the loop.
    if defer_to_loop(lambda: _publish_on_loop(groups, payload)):
        return
    try:
        async_to_sync(bus.publish)(groups, payload)
    except Exception as exc:  # noqa: BLE001
        _publish_failed(groups, exc)


async def _publish_on_loop(groups: list[str], message: dict[str, Any]) -> None:
    try:
        await bus.publish(groups, message)
    except Exception as exc:  # noqa: BLE001
        _publish_failed(groups, exc)


def _publish_failed(groups: list[str], exc: Exception) -> None:
    metrics.LAYER_ERRORS.labels(op="group_send").inc()
    logger.warning("event publish failed", extra={"groups": len(groups), "error": exc.__class__.__name__})


def send_on_commit(env: Envelope, *, groups: list[str] | None = None) -> None:
    targets = groups if groups is not None else [group_of(env["audience"])]
    transaction.on_commit(lambda: publish(targets, env))


def _conversation(conversation_id: object, **filters: int) -> Audience:
    audience: Audience = {"kind": "conversation", "id": str(conversation_id)}
    if "exclude_user" in filters:
        audience["exclude_user"] = filters["exclude_user"]
    if "only_user" in filters:
        audience["only_user"] = filters["only_user"]
    return audience


def _user(user_id: int) -> Audience:
    return {"kind": "user", "id": user_id}


# --- One function per event type ----------------------------------------------------------------


def _message_new(message: Message) -> Envelope:
    frame = {"type": "message.new", "message": presenters.message(message)}
    return envelope(_conversation(message.conversation_id), frame, seq=message.seq)


def message_new(message: Message) -> None:
    send_on_commit(_message_new(message))


async def amessage_new(message: Message) -> None:
    """:func:`message_new` from the event loop, for a message already committed."""
    env = _message_new(message)
    await _publish_on_loop([group_of(env["audience"])], dict(env))


def typing(*, conversation_id: object, user_id: int, state: str) -> None:
    frame = {"type": "typing", "conversation_id": str(conversation_id), "user_id": user_id, "state": state}
    # A start ends by itself: every instance delivers a stop after the expiry unless a newer
    # state of the same user in the same conversation came first.
    expires = {
        "key": f"typing:{conversation_id}:{user_id}",
        "after": settings.TYPING_EXPIRY_SECONDS if state == "start" else None,
        "frame": {**frame, "state": "stop"},
    }
    send_on_commit(envelope(_conversation(conversation_id, exclude_user=user_id), frame, expires=expires))


def read(*, conversation_id: object, user_id: int, seq: int, read_at: Any) -> None:
    frame = {
        "type": "read",
        **presenters.read_receipt(conversation_id=conversation_id, user_id=user_id, seq=seq, read_at=read_at),
    }
    send_on_commit(envelope(_conversation(conversation_id), frame))


def conversation_joined(*, conversation: Conversation, user_id: int) -> None:
    frame = {"type": "conversation.joined", "conversation": presenters.conversation(conversation)}
    control: Control = {
        "op": "join",
        "conversation_id": str(conversation.id),
        "user_id": user_id,
        "last_seq": conversation.last_seq,
    }
    send_on_commit(envelope(_user(user_id), frame, control=control))


def conversation_left(*, conversation_id: object, user_id: int) -> None:
    # Sent on the conversation's group: every instance holding the user's sockets is subscribed
    # to it, and it stays ordered with the conversation's other events from the same sender.
    frame = {"type": "conversation.left", "conversation_id": str(conversation_id)}
    control: Control = {"op": "leave", "conversation_id": str(conversation_id), "user_id": user_id}
    send_on_commit(envelope(_conversation(conversation_id, only_user=user_id), frame, control=control))
    send_on_commit(envelope(_user(user_id), None, control=control))


def disconnect_user(*, user_id: int, code: int) -> None:
    """Close every socket of the user, on every instance, with ``code``."""
    control: Control = {"op": "disconnect", "user_id": user_id, "code": code}
    send_on_commit(envelope(_user(user_id), None, control=control))


def versioned(
    *, user_id: int, version: int, conversation_ids: list[str], public: dict[str, Any] | None, own: dict[str, Any]
) -> None:
    """A fact about a user (its presence): ``public`` to everyone sharing a conversation with the
    user, ``own`` to the user's own sockets, in one envelope published to each of the user's
    conversation groups and to the user's group (for a user without conversations). An
    instance that gets it through several of them delivers it once (the router keeps the last
    version it delivered per user). ``public`` is None (and ``conversation_ids`` empty) when
    others have nothing to learn."""
    info = {"user_id": user_id, "version": version, "conversation_ids": conversation_ids, "own_frame": own}
    env = envelope(_user(user_id), public, versioned=info)
    groups = [conversation_group(cid) for cid in conversation_ids] + [user_group(user_id)]
    send_on_commit(env, groups=groups)
