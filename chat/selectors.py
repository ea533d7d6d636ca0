"""Reads. Every selector that touches a conversation checks participation first."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from core import pg
from core.db import db_call
from core.errors import AccountInactive, Invalid, NotFound, NotParticipant
from core.prepared import Prepared

from .models import Conversation, Message, Participant
from .presenters import receipt

User = get_user_model()


def parse_conversation_id(raw: object) -> uuid.UUID:
    """Conversation ids are opaque to clients; anything that is not one of ours is a 404."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw))
    except (ValueError, TypeError, AttributeError):
        raise NotFound("No such conversation.") from None


def conversation_for(*, user_id: int, conversation_id: object) -> Conversation:
    """The conversation, if it exists (404) and the user takes part in it (403)."""
    cid = parse_conversation_id(conversation_id)
    conversation = Conversation.objects.filter(pk=cid).first()
    if conversation is None:
        raise NotFound("No such conversation.")
    if not active_participant(conversation_id=cid, user_id=user_id):
        raise_not_participant(user_id=user_id)
    return conversation


def conversation_detail(*, user_id: int, conversation_id: object) -> Conversation:
    """As ``conversation_for``, with participants and their users loaded for the presenter in
    two queries whatever the size."""
    conversation = conversation_for(user_id=user_id, conversation_id=conversation_id)
    return Conversation.objects.prefetch_related("participants__user").get(pk=conversation.pk)


def active_participant(*, conversation_id: uuid.UUID, user_id: int) -> bool:
    """Participation and an active account, checked at the time of every action (a socket of a
    user deactivated a moment ago must not act before its close arrives)."""
    return Participant.objects.filter(conversation_id=conversation_id, user_id=user_id, user__is_active=True).exists()


def raise_not_participant(*, user_id: int) -> None:
    require_active(user_id=user_id)
    raise NotParticipant()


def require_active(*, user_id: int) -> None:
    """Raise ``AccountInactive`` unless the account is active now. Actions whose own query
    already joins the user's row check it there and call this only on a miss."""
    if not User.objects.filter(pk=user_id, is_active=True).exists():
        raise AccountInactive()


def conversations_of(*, user_id: int) -> QuerySet[Conversation]:
    """The user's conversations, latest activity first, each with ``unread``: the messages of
    others after the user's read position. A conversation without messages counts from its
    creation; ordering on last_message_at alone puts those first on PostgreSQL, which sorts
    NULL above every date in a descending order."""
    read_seq = Participant.objects.filter(conversation_id=OuterRef(OuterRef("pk")), user_id=user_id).values(
        "last_read_seq"
    )[:1]
    unread = (
        Message.objects.filter(conversation_id=OuterRef("pk"), seq__gt=Subquery(read_seq))
        .exclude(sender_id=user_id)
        .order_by()
        .values("conversation_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return (
        Conversation.objects.filter(participants__user_id=user_id)
        .annotate(unread=Coalesce(Subquery(unread), 0))
        .prefetch_related("participants__user")
        .order_by(Coalesce("last_message_at", "created_at").desc(), "-created_at", "-id")
    )


_CONVERSATION_SEQS = Prepared(
    lambda user_id: Conversation.objects.filter(participants__user_id=user_id).values_list("id", "last_seq"),
    user_id=-982_451_653,  # a marker no query of this shape holds otherwise
)


def conversation_seqs(*, user_id: int) -> dict[str, int]:
    """The user's conversations with the latest seq of each (a socket's streams at connect; a
    query prepared once, core/prepared.py)."""
    rows = _CONVERSATION_SEQS.rows(using=Conversation.objects.db, user_id=int(user_id))
    return {str(cid): seq for cid, seq in rows}


def latest_seqs(conversation_ids: list[str]) -> dict[str, int]:
    """The latest seq of each conversation (the router's catch-up after a bus outage)."""
    return {
        str(cid): seq for cid, seq in Conversation.objects.filter(pk__in=conversation_ids).values_list("id", "last_seq")
    }


_latest_seqs_orm = db_call(latest_seqs)


_LATEST_SEQS_SQL = f"SELECT id, last_seq FROM {Conversation._meta.db_table} WHERE id = ANY(%(ids)s::uuid[])"  # noqa: S608


async def alatest_seqs(conversation_ids: list[str]) -> dict[str, int]:
    """:func:`latest_seqs` from the event loop: on the loop's own connections when it can
    (core/pg.py; the router's sweep runs it every few seconds on every instance)."""
    statements = pg.available()
    if statements is None:
        return await _latest_seqs_orm(conversation_ids)
    if not conversation_ids:
        return {}
    rows = await statements.fetchall(_LATEST_SEQS_SQL, {"ids": list(conversation_ids)})
    return {str(cid): seq for cid, seq in rows}


def conversation_ids_of(*, user_id: int) -> list[str]:
    return [str(c) for c in Participant.objects.filter(user_id=user_id).values_list("conversation_id", flat=True)]


def contact_ids(*, user_id: int, active: bool = False) -> list[int]:
    """Every user who shares at least one conversation with ``user_id`` (not the user itself);
    with ``active``, none unless ``user_id``'s account is active (checked in the same query)."""
    participations = Participant.objects.filter(user_id=user_id)
    if active:
        participations = participations.filter(user__is_active=True)
    mine = participations.values("conversation_id")
    return list(
        Participant.objects.filter(conversation_id__in=mine)
        .exclude(user_id=user_id)
        .order_by()  # the model's default ordering would defeat distinct()
        .values_list("user_id", flat=True)
        .distinct()
    )


def shares_conversation(*, user_id: int, other_id: int) -> bool:
    mine = Participant.objects.filter(user_id=user_id).values("conversation_id")
    return Participant.objects.filter(conversation_id__in=mine, user_id=other_id).exists()


def _seq_param(name: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Invalid.field(name, "Must be a whole number.") from None
    if number < 0:
        raise Invalid.field(name, "Must not be negative.")
    return number


def messages_page(
    *, user_id: int, conversation_id: object, after_seq: Any = None, before_seq: Any = None, limit: Any = None
) -> tuple[list[Message], bool]:
    """Messages in seq order. ``after_seq`` pages forward from a cursor, ``before_seq`` (or
    neither) pages backward from the newest; ``has_more`` says whether the page was cut."""
    conversation = conversation_for(user_id=user_id, conversation_id=conversation_id)
    after = _seq_param("after_seq", after_seq)
    before = _seq_param("before_seq", before_seq)
    size = _seq_param("limit", limit)
    size = 50 if size is None else size
    if not 1 <= size <= settings.MESSAGES_PAGE_MAX:
        raise Invalid.field("limit", f"Must be between 1 and {settings.MESSAGES_PAGE_MAX}.")
    qs = Message.objects.filter(conversation=conversation)
    if before is not None:
        qs = qs.filter(seq__lt=before)
    if after is not None:
        qs = qs.filter(seq__gt=after)
        rows = list(qs.order_by("seq")[: size + 1])
        return rows[:size], len(rows) > size
    rows = list(qs.order_by("-seq")[: size + 1])
    has_more = len(rows) > size
    return list(reversed(rows[:size])), has_more


# Markers of the prepared queries below (core/prepared.py): values no real query of theirs holds.
_ID_MARKER = 982_451_653
_UUID_MARKER = uuid.UUID("00000000-0000-4000-8000-00000000e1f0")


@functools.cache
def _message_fields() -> list[str]:
    return [f.attname for f in Message._meta.concrete_fields]  # from_db takes them in this order


@functools.lru_cache(maxsize=8)
def _messages_after_query(limit: int) -> Prepared:
    fields = _message_fields()
    return Prepared(
        lambda cid, after: (
            Message.objects.filter(conversation_id=cid, seq__gt=after).order_by("seq").values_list(*fields)[:limit]
        ),
        cid=_UUID_MARKER,
        after=_ID_MARKER,
    )


def messages_after(*, conversation_id: uuid.UUID | str, after_seq: int, limit: int) -> list[Message]:
    """For resume and the router's gap fills: no participation check here, the caller has done
    it. Prepared once per limit (a resume's limit is nearly always the same)."""
    cid = conversation_id if isinstance(conversation_id, uuid.UUID) else uuid.UUID(str(conversation_id))
    names = _message_fields()
    db = Message.objects.db
    rows = _messages_after_query(int(limit)).rows(using=db, cid=cid, after=int(after_seq))
    return [Message.from_db(db, names, row) for row in rows]


_ONE_PARTICIPATION = Prepared(
    lambda cid, user_id: Participant.objects.filter(
        conversation_id=cid, user_id=user_id, user__is_active=True
    ).values_list("conversation_id", "conversation__last_seq"),
    cid=_UUID_MARKER,
    user_id=_ID_MARKER,
)


def resume_messages(
    *, user_id: int, cursors: dict[str, int], per_conversation: int, total: int
) -> list[tuple[str, list[Message], bool]]:
    """A resume's rows in one database call: participation in every conversation checked now,
    in one query that also reads each conversation's latest seq (the first conversation that
    fails raises 404 or 403 as ``conversation_for``); then, only for conversations with messages
    after their cursor, those messages in seq order, at most ``per_conversation`` each and
    ``total`` in all. Returns ``[(conversation id, rows, truncated)]`` in the cursors' order; a
    client that is up to date costs one query whatever the number of its conversations."""
    if len(cursors) == 1:  # a reconnecting client's usual resume: a prepared query
        (only,) = cursors
        found = _ONE_PARTICIPATION.rows(using=Participant.objects.db, cid=uuid.UUID(only), user_id=int(user_id))
    else:
        found = list(
            Participant.objects.filter(
                conversation_id__in=list(cursors), user_id=user_id, user__is_active=True
            ).values_list("conversation_id", "conversation__last_seq")
        )
    latest = {str(cid): last for cid, last in found}
    for cid in cursors:
        if cid not in latest:
            conversation_for(user_id=user_id, conversation_id=cid)  # raises the precise error
            raise NotParticipant()
    out: list[tuple[str, list[Message], bool]] = []
    left = total
    for cid, after in cursors.items():
        limit = min(per_conversation, left)
        rows = messages_after(conversation_id=cid, after_seq=after, limit=limit + 1) if latest[cid] > after else []
        left -= min(len(rows), limit)
        out.append((cid, rows[:limit], len(rows) > limit))
    return out


def read_receipts(*, user_id: int, conversation_id: object) -> list[dict[str, Any]]:
    conversation = conversation_for(user_id=user_id, conversation_id=conversation_id)
    return [receipt(p) for p in Participant.objects.filter(conversation=conversation).order_by("user_id")]


def active_user(*, user_id: Any) -> AbstractBaseUser:
    try:
        uid = int(user_id)
    except (TypeError, ValueError):
        raise NotFound("No such user.") from None
    user = User.objects.filter(pk=uid, is_active=True).first()
    if user is None:
        raise NotFound("No such user.")
    return user
