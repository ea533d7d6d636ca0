"""Writes. The WebSocket consumer and the DRF views both call these, so the two paths behave
the same: same validation, same authorization at the time of the action, same events."""

from __future__ import annotations

import secrets
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, transaction
from django.utils import timezone

from core import metrics, pg, redis_client
from core.db import db_call
from core.errors import Invalid, NotFound, NotParticipant, PermissionDenied
from core.validation import check_text

from . import events, ratelimit, topics
from .models import CLIENT_MSG_ID_MAX_CHARS, TITLE_MAX_CHARS, Conversation, Message, Participant
from .ratelimit import check_send_rate
from .selectors import active_participant, conversation_for, parse_conversation_id, raise_not_participant

User = get_user_model()

TYPING_STATES = ("start", "stop")


@dataclass(frozen=True)
class SendResult:
    message: Message
    repeat: bool  # True when client_msg_id matched an earlier send: nothing new was stored


@dataclass(frozen=True)
class ReadResult:
    seq: int
    read_at: Any


# --- Conversations and participants ---------------------------------------------------------


def addable_users(*, actor_id: int, user_ids: list[int]) -> set[int]:
    """Those of ``user_ids`` the actor may put into a conversation: active users, and under
    CONVERSATION_ADD_POLICY=contacts only those who already share a conversation with them."""
    qs = User.objects.filter(pk__in=user_ids, is_active=True)
    if settings.CONVERSATION_ADD_POLICY == "contacts":
        mine = Participant.objects.filter(user_id=actor_id).values("conversation_id")
        qs = qs.filter(pk__in=Participant.objects.filter(conversation_id__in=mine).values("user_id"))
    return set(qs.values_list("pk", flat=True))


def _user_ids(raw: Any, field: str, *, actor_id: int) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        raise Invalid.field(field, "Must be a list of user ids.")
    if len(raw) > 1000:
        raise Invalid.field(field, "At most 1000 participants at creation.")
    ids = [i for i in dict.fromkeys(raw) if i != actor_id]
    # One answer for an id that does not exist, a deactivated user and one the policy
    # refuses, and never which ids: the error reveals nothing about who exists.
    if len(addable_users(actor_id=actor_id, user_ids=ids)) != len(ids):
        raise Invalid.field(field, CANNOT_ADD)
    return ids


CANNOT_ADD = "Some of these users cannot be added to a conversation by you."


@transaction.atomic
def conversation_create(*, creator_id: int, title: str = "", participant_ids: Any) -> Conversation:
    """Create a conversation; the creator is its owner and a participant."""
    if not isinstance(title, str) or len(title) > TITLE_MAX_CHARS:
        raise Invalid.field("title", f"Must be a string of at most {TITLE_MAX_CHARS} characters.")
    check_text(title, "title")
    ratelimit.check("conversation", user_id=creator_id)
    ids = _user_ids(participant_ids, "participant_ids", actor_id=creator_id)
    conversation = Conversation.objects.create(title=title.strip(), owner_id=creator_id)
    Participant.objects.create(conversation=conversation, user_id=creator_id, role=Participant.Role.OWNER)
    Participant.objects.bulk_create([Participant(conversation=conversation, user_id=i) for i in ids])
    topics.memberships_changed(ids)  # bulk_create sends no signals
    conversation = Conversation.objects.prefetch_related("participants__user").get(pk=conversation.pk)
    for uid in [creator_id, *ids]:
        events.conversation_joined(conversation=conversation, user_id=uid)
    return conversation


@transaction.atomic
def participant_add(*, actor_id: int, conversation_id: object, user_id: Any) -> tuple[Participant, bool]:
    """The owner adds a user; their live sockets start receiving at once (``conversation.joined``).
    Returns (participant, created); adding an existing participant changes nothing."""
    ratelimit.check("conversation", user_id=actor_id)
    conversation = conversation_for(user_id=actor_id, conversation_id=conversation_id)
    if conversation.owner_id != actor_id:
        raise PermissionDenied("Only the owner adds participants.")
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise Invalid.field("user_id", "Must be a user id.")
    if user_id not in addable_users(actor_id=actor_id, user_ids=[user_id]):
        raise Invalid.field("user_id", CANNOT_ADD)
    participant, created = Participant.objects.get_or_create(conversation=conversation, user_id=user_id)
    if created:
        conversation = Conversation.objects.prefetch_related("participants__user").get(pk=conversation.pk)
        events.conversation_joined(conversation=conversation, user_id=user_id)
    return participant, created


@transaction.atomic
def participant_remove(*, actor_id: int, conversation_id: object, user_id: Any) -> None:
    """The owner removes anyone; anyone may leave. When the owner leaves, the longest-standing
    remaining participant becomes the owner. The removed user's sockets stop receiving at once."""
    ratelimit.check("conversation", user_id=actor_id)
    cid = parse_conversation_id(conversation_id)
    conversation = Conversation.objects.select_for_update().filter(pk=cid).first()
    if conversation is None:
        raise NotFound("No such conversation.")
    if not Participant.objects.filter(conversation=conversation, user_id=actor_id).exists():
        raise NotParticipant()
    try:
        target_id = int(user_id)
    except (TypeError, ValueError):
        raise NotFound("No such participant.") from None
    if target_id != actor_id and conversation.owner_id != actor_id:
        raise PermissionDenied("Only the owner removes other participants.")
    deleted, _ = Participant.objects.filter(conversation=conversation, user_id=target_id).delete()
    if not deleted:
        raise NotFound("No such participant.")
    if conversation.owner_id == target_id:
        successor = Participant.objects.filter(conversation=conversation).order_by("joined_at", "id").first()
        conversation.owner_id = successor.user_id if successor else None
        conversation.save(update_fields=["owner"])
        if successor:
            Participant.objects.filter(pk=successor.pk).update(role=Participant.Role.OWNER)
    events.conversation_left(conversation_id=cid, user_id=target_id)


# --- Messages, reads, typing ----------------------------------------------------------------


def _validate_body(body: Any) -> str:
    if not isinstance(body, str):
        raise Invalid.field("body", "This field is required and must be a string.")
    if not body.strip():
        raise Invalid.field("body", "Must not be blank.")
    if len(body) > settings.MESSAGE_MAX_CHARS:
        raise Invalid.field("body", f"At most {settings.MESSAGE_MAX_CHARS} characters.")
    return check_text(body, "body")


def _validate_client_msg_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= CLIENT_MSG_ID_MAX_CHARS:
        raise Invalid.field("client_msg_id", f"Must be a string of 1 to {CLIENT_MSG_ID_MAX_CHARS} characters.")
    return check_text(value, "client_msg_id")


def message_send(*, sender_id: int, conversation_id: object, body: Any, client_msg_id: Any = None) -> SendResult:
    """Persist a message with the conversation's next gap-free seq, then broadcast it once.

    The message is committed before this returns, so an ack built from the result never
    acknowledges something a crash could lose. A repeated ``client_msg_id`` from the same
    sender returns the original, is not stored again and is not broadcast again.
    """
    body = _validate_body(body)
    client_msg_id = _validate_client_msg_id(client_msg_id)
    cid = parse_conversation_id(conversation_id)
    if client_msg_id is not None:
        original = _original(cid, sender_id, client_msg_id)
        if original is not None:
            _check_participant(cid, sender_id)
            return SendResult(original, True)
    check_send_rate(user_id=sender_id)
    try:
        if connection.vendor == "postgresql":
            return _send_one_statement(cid, sender_id, body, client_msg_id)
        return _send_locked(cid, sender_id, body, client_msg_id)
    except IntegrityError:
        # A concurrent send with the same client_msg_id won the race; its transaction rolled
        # ours back entirely, the seq increment included, so no gap was left.
        if client_msg_id is not None:
            original = _original(cid, sender_id, client_msg_id)
            if original is not None:
                return SendResult(original, True)
        raise


def _original(cid: uuid.UUID, sender_id: int, client_msg_id: str) -> Message | None:
    return Message.objects.filter(conversation_id=cid, sender_id=sender_id, client_msg_id=client_msg_id).first()


def _check_participant(cid: uuid.UUID, user_id: int) -> None:
    if not Conversation.objects.filter(pk=cid).exists():
        raise NotFound("No such conversation.")
    if not active_participant(conversation_id=cid, user_id=user_id):
        raise_not_participant(user_id=user_id)


def _send_sql() -> str:
    # Only table names from the models' own metadata are formatted in; values are parameters.
    conv, part, msg, user = Conversation._meta, Participant._meta, Message._meta, User._meta
    return f"""
WITH c AS (
    UPDATE {conv.db_table} SET last_seq = last_seq + 1, last_message_at = %(now)s
    WHERE id = %(cid)s AND EXISTS (
        SELECT 1 FROM {part.db_table} WHERE conversation_id = %(cid)s AND user_id = %(sender)s
    ) AND EXISTS (
        SELECT 1 FROM {user.db_table} WHERE {user.pk.column} = %(sender)s AND {user.get_field("is_active").column}
    )
    RETURNING last_seq
)
INSERT INTO {msg.db_table} (id, conversation_id, seq, sender_id, body, client_msg_id, created_at)
SELECT %(id)s, %(cid)s, c.last_seq, %(sender)s, %(body)s, %(client_msg_id)s, %(now)s FROM c
RETURNING seq
"""  # noqa: S608


_SEND_SQL = _send_sql()


def _send_params(cid: uuid.UUID, sender_id: int, body: str, client_msg_id: str | None) -> dict[str, Any]:
    return {
        "cid": cid,
        "sender": sender_id,
        "now": timezone.now(),
        "id": uuid.uuid4(),
        "body": body,
        "client_msg_id": client_msg_id,
    }


def _stored(params: dict[str, Any], seq: int) -> Message:
    """The message the send statement stored (it returns only the seq)."""
    message = Message(
        id=params["id"],
        conversation_id=params["cid"],
        seq=seq,
        sender_id=params["sender"],
        body=params["body"],
        client_msg_id=params["client_msg_id"],
        created_at=params["now"],
    )
    message._state.adding = False
    message._state.db = DEFAULT_DB_ALIAS
    metrics.MESSAGES_PERSISTED.inc()
    return message


def _send_one_statement(cid: uuid.UUID, sender_id: int, body: str, client_msg_id: str | None) -> SendResult:
    """The send in one round trip (PostgreSQL): the UPDATE takes the conversation's row lock and
    the next seq, the INSERT stores the message, both or neither (one statement). A concurrent
    sender of the same conversation waits on the row lock and then sees the new last_seq, so
    seqs stay gap-free and unique; a duplicate client_msg_id fails the whole statement."""
    params = _send_params(cid, sender_id, body, client_msg_id)
    with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
        cursor.execute(_SEND_SQL, params)
        row = cursor.fetchone()
    if row is None:
        _check_participant(cid, sender_id)
        raise NotParticipant()  # added only after the statement ran: not a participant at the send
    message = _stored(params, row[0])
    topics.seq_advanced(cid, message.seq)  # raw SQL sends no signals; before the event's publish
    events.message_new(message)
    return SendResult(message, False)


def _original_sql() -> str:
    msg = Message._meta
    return f"""
SELECT 1 FROM {msg.db_table}
WHERE conversation_id = %(cid)s AND sender_id = %(sender)s AND client_msg_id = %(client_msg_id)s
"""  # noqa: S608


_ORIGINAL_SQL = _original_sql()


async def amessage_send(*, sender_id: int, conversation_id: object, body: Any, client_msg_id: Any = None) -> SendResult:
    """:func:`message_send` from the event loop (the WebSocket's ``message.send``): the same
    checks, the same statement and the same events, with the statement on the loop's own
    database connections (core/pg.py) instead of a worker thread, the send budget taken with
    the loop's batched Redis client, and the publish awaited before the ack. A repeated
    ``client_msg_id`` and a refusal take the ORM path (they are rare)."""
    statements = pg.available()
    if statements is None:  # not PostgreSQL, or not the runtime's loop
        return await db_call(message_send)(
            sender_id=sender_id, conversation_id=conversation_id, body=body, client_msg_id=client_msg_id
        )
    body = _validate_body(body)
    client_msg_id = _validate_client_msg_id(client_msg_id)
    cid = parse_conversation_id(conversation_id)
    params = _send_params(cid, sender_id, body, client_msg_id)
    if client_msg_id is not None and await statements.fetchone(_ORIGINAL_SQL, params) is not None:
        return await db_call(message_send)(
            sender_id=sender_id, conversation_id=cid, body=body, client_msg_id=client_msg_id
        )
    await ratelimit.acheck("send", user_id=sender_id)
    try:
        row = await statements.fetchone(_SEND_SQL, params)
    except IntegrityError:
        if client_msg_id is None:
            raise
        # A concurrent send with the same client_msg_id won (see message_send): its original.
        return await db_call(message_send)(
            sender_id=sender_id, conversation_id=cid, body=body, client_msg_id=client_msg_id
        )
    if row is None:
        await db_call(_check_participant)(cid, sender_id)
        raise NotParticipant()
    message = _stored(params, row[0])
    await topics.aseq_advanced(cid, message.seq)  # before the event's publish, as after a commit
    await events.amessage_new(message)
    return SendResult(message, False)


@transaction.atomic
def _send_locked(cid: uuid.UUID, sender_id: int, body: str, client_msg_id: str | None) -> SendResult:
    # The ORM form of the send, for databases other than PostgreSQL (the embedded SQLite):
    # SQLite runs IMMEDIATE transactions, which serialise every writer; elsewhere the row lock
    # on the conversation serialises the senders of one conversation.
    conversation = Conversation.objects.select_for_update().only("id", "last_seq").filter(pk=cid).first()
    if conversation is None:
        raise NotFound("No such conversation.")
    if not active_participant(conversation_id=cid, user_id=sender_id):
        raise_not_participant(user_id=sender_id)
    if client_msg_id is not None:
        original = _original(cid, sender_id, client_msg_id)
        if original is not None:
            return SendResult(original, True)
    now = timezone.now()
    conversation.last_seq += 1
    conversation.last_message_at = now
    conversation.save(update_fields=["last_seq", "last_message_at"])
    message = Message.objects.create(
        conversation_id=cid,
        seq=conversation.last_seq,
        sender_id=sender_id,
        body=body,
        client_msg_id=client_msg_id,
        created_at=now,
    )
    metrics.MESSAGES_PERSISTED.inc()
    events.message_new(message)
    return SendResult(message, False)


@transaction.atomic
def read_mark(*, user_id: int, conversation_id: object, seq: Any) -> ReadResult:
    """Move the user's read marker forward; a lower seq than already read changes nothing."""
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise Invalid.field("seq", "Must be a non-negative whole number.")
    ratelimit.check("read", user_id=user_id)
    conversation = conversation_for(user_id=user_id, conversation_id=conversation_id)
    if seq > conversation.last_seq:
        raise Invalid.field("seq", f"Past the last message (seq {conversation.last_seq}).")
    participant = Participant.objects.select_for_update().get(conversation=conversation, user_id=user_id)
    if seq <= participant.last_read_seq:
        return ReadResult(participant.last_read_seq, participant.last_read_at)
    participant.last_read_seq = seq
    participant.last_read_at = timezone.now()
    participant.save(update_fields=["last_read_seq", "last_read_at"])
    events.read(conversation_id=conversation.id, user_id=user_id, seq=seq, read_at=participant.last_read_at)
    return ReadResult(seq, participant.last_read_at)


def typing_set(*, user_id: int, conversation_id: object, state: Any) -> bool:
    """Broadcast a typing state to the other participants. Returns whether it was broadcast:
    conversations over TYPING_MAX_PARTICIPANTS get none (it would be noise at that size), and
    a state that repeats the last one broadcast is dropped."""
    if state not in TYPING_STATES:
        raise Invalid.field("state", "Must be 'start' or 'stop'.")
    ratelimit.check("typing", user_id=user_id)
    conversation = conversation_for(user_id=user_id, conversation_id=conversation_id)
    if Participant.objects.filter(conversation=conversation).count() > settings.TYPING_MAX_PARTICIPANTS:
        return False
    # A repeated "start" is dropped for half the expiry only: a user still typing is broadcast
    # again before the receivers' indicator lapses (it expires TYPING_EXPIRY_SECONDS after the
    # last broadcast start). A repeated "stop" is dropped until the expiry has passed.
    lifetime = settings.TYPING_EXPIRY_SECONDS / 2 if state == "start" else settings.TYPING_EXPIRY_SECONDS
    if not ratelimit.changed("typing", conversation.id, user_id, state=state, lifetime_seconds=lifetime):
        return False
    events.typing(conversation_id=conversation.id, user_id=user_id, state=state)
    return True


# --- WebSocket tickets ----------------------------------------------------------------------

_local_tickets: dict[str, tuple[int, float]] = {}


def ws_ticket_issue(*, user_id: int) -> str:
    """A single-use ticket for ``/ws/chat/?ticket=``, valid WS_TICKET_TTL_SECONDS."""
    ratelimit.check("ticket", user_id=user_id)
    ticket = secrets.token_urlsafe(32)
    ttl = settings.WS_TICKET_TTL_SECONDS
    if redis_client.cluster_mode():
        redis_client.with_failover_retry(lambda r: r.set(redis_client.key("ticket", ticket), user_id, ex=ttl))
    else:
        now = timezone.now().timestamp()
        for stale in [k for k, (_, exp) in _local_tickets.items() if exp < now]:
            _local_tickets.pop(stale, None)
        _local_tickets[ticket] = (user_id, now + ttl)
    return ticket


def ws_ticket_consume(*, ticket: str) -> int | None:
    """The user id the ticket was issued to, once; None when unknown, used or expired."""
    if not ticket or len(ticket) > 128:
        return None
    if redis_client.cluster_mode():
        value = redis_client.with_failover_retry(lambda r: r.getdel(redis_client.key("ticket", ticket)))
        return int(value) if value is not None else None
    entry = _local_tickets.pop(ticket, None)
    if entry is None or entry[1] < timezone.now().timestamp():
        return None
    return entry[0]
