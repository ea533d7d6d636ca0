"""The WebSocket interface at /ws/chat/: one socket per device, all the user's conversations.

An interface only: each handler parses a frame, calls the same service as the HTTP view and
renders with the same presenter. The socket machinery (handshake, routing, registry, queue,
close codes) is realtime's; other apps add their frame handlers to the same table
(``@ChatConsumer.handler("type")``) and react to a user's first connection.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings

from core.db import db_call
from core.errors import Invalid, RateLimited
from realtime.consumer import RealtimeConsumer
from realtime.protocol import encode

from . import presenters, ratelimit, revocation, schemas, selectors, services, socket_cap
from . import topics as topic_cache

assert schemas  # the frames' schemas are registered with the protocol on import


# Frames whose handler calls no service that takes from a budget itself (the services behind
# message.send, typing, read and status.set do, for HTTP and the socket alike).
FRAME_BUDGETS = {"ping": "ping", "resume": "resume", "presence.sync": "presence_sync"}


class ChatConsumer(RealtimeConsumer):
    resume_running: bool = False
    address: str = ""
    address_counted: bool = False
    address_user_id: int = 0

    async def _connect(self) -> None:
        """The caps on sockets per user and per address first; once connected, the socket's
        credential is re-checked periodically (chat/revocation.py). The base class releases the
        handshake's connect slot after this, refused or not."""
        user: Any = self.scope.get("user")
        known = bool(user is not None and user.is_authenticated and user.is_active)
        if known and await socket_cap.over_cap(int(user.pk)):
            await self._refuse(socket_cap.CLOSE_TOO_MANY_SOCKETS)
            return
        if known:
            self.connection_id = str(uuid.uuid4())
            self.address = socket_cap.client_address(self.scope)
            if not await socket_cap.admit_address(self.address, int(user.pk), self.connection_id):
                await self._refuse(socket_cap.CLOSE_TOO_MANY_SOCKETS)
                return
            self.address_counted, self.address_user_id = True, int(user.pk)
        await super()._connect()
        if not self.registered:
            await self._release_address()
        elif known and self.session is not None:
            revocation.track(self.session, revocation.credential_for(self.scope, user))

    async def _tear_down(self, code: int) -> None:
        counted = self.registered
        try:
            await super()._tear_down(code)
        finally:
            if counted:
                await self._release_address()

    async def _release_address(self) -> None:
        if self.address_counted:
            self.address_counted = False
            await socket_cap.release_address(self.address, self.address_user_id, self.connection_id)

    async def topics(self) -> dict[str, int]:
        """The user's conversations and the latest seq of each (from Redis; chat/topics.py)."""
        return await topic_cache.conversation_seqs(self.user_id, _load_conversation_seqs, selectors.alatest_seqs)

    async def check_budget(self, frame_type: str) -> None:
        """The user's cluster-wide budget of this frame type (429 when spent)."""
        budget = FRAME_BUDGETS.get(frame_type)
        if budget is not None:
            await ratelimit.acheck(budget, user_id=self.user_id)


_conversation_seqs = db_call(selectors.conversation_seqs)


async def _load_conversation_seqs(user_id: int) -> dict[str, int]:
    return await _conversation_seqs(user_id=user_id)


def _required(data: dict[str, Any], name: str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise Invalid.field(name, "This field is required.")
    return value


@ChatConsumer.handler("message.send", pipelined_by="conversation_id")
async def on_message_send(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
    """Persist, then ack with the message; every participant gets ``message.new``."""
    result = await services.amessage_send(
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
    # At most one resume per socket at a time (each may send thousands of frames).
    if consumer.resume_running:
        raise RateLimited("A resume is already running on this socket.", retry_after=1.0)
    consumer.resume_running = True
    try:
        return await _resume(consumer, data)
    finally:
        consumer.resume_running = False


async def _resume(consumer: ChatConsumer, data: dict[str, Any]) -> dict[str, Any]:
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
    # One frame must not buy unbounded output (a thousand cursors from 0): past the total,
    # conversations with missed messages get resume.truncated and the client pages over HTTP.
    for cid in parsed:
        # Held from before the query (and since connect): a live message arriving meanwhile
        # waits for the rows. Whatever happens next, the answer to this frame releases them.
        session.take_over_held(cid)
    # Participation is checked now, at the time of the action.
    batches = await db_call(selectors.resume_messages)(
        user_id=consumer.user_id,
        cursors=parsed,
        per_conversation=settings.RESUME_MAX_PER_CONVERSATION,
        total=settings.RESUME_MAX_TOTAL_MESSAGES,
    )
    resumed: dict[str, int] = {}
    for cid, rows, truncated in batches:
        after = parsed[cid]
        last = after
        try:
            for row in rows:
                await session.drain_below(session.queue_limit // 2)
                session.push(encode({"type": "message.new", "message": presenters.message(row)}), "message.new")
                last = row.seq
            if truncated:
                session.reply({"type": "resume.truncated", "conversation_id": cid, "next_seq": last + 1})
            session.sent_seq[cid] = max(session.sent_seq.get(cid, 0), last)
        finally:
            held = session.resuming.pop(cid, [])
        # Live messages that arrived meanwhile, unless truncated (the client pages over HTTP).
        if not truncated:
            for seq, text in sorted(held):
                session.push_sequenced(cid, seq, text)
        resumed[cid] = session.sent_seq.get(cid, after)
    return {"resumed": resumed}
