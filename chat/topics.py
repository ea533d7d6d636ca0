"""A user's conversations and the latest seq of each, for a socket's connect, from Redis.

Two kinds of cached facts (core/guarded_cache.py), each in its own hash-tag slot::

    <prefix>:{u:<user>}:topics       "cid,cid,..."  the user's conversations (exact: invalidated
                                                    on every participant added or removed and on
                                                    conversation create, rebuilt from the
                                                    database when missing)
    <prefix>:{c:<conversation>}:seq  "<seq>"        the conversation's latest seq (only raised,
                                                    after each send commits)

A seq read here may trail the database by a send still on its way; the router's sequencer then
fetches the gap from the database, so no message is skipped. Membership is never stale: the
socket's subscriptions at connect are the user's conversations as of the last change. Single
mode (no Redis) reads the database every time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from django.db import transaction
from redis.exceptions import RedisError

from core import guarded_cache, redis_client
from core.db import defer_to_loop

logger = logging.getLogger("chat.topics")

TOPICS = "topics"
SEQ = "seq"

LoadAll = Callable[[int], Awaitable[dict[str, int]]]
LoadSeqs = Callable[[list[str]], Awaitable[dict[str, int]]]


def _user_tag(user_id: int) -> str:
    return f"u:{int(user_id)}"


def _conversation_tag(conversation_id: object) -> str:
    return f"c:{conversation_id}"


async def conversation_seqs(user_id: int, load_all: LoadAll, load_seqs: LoadSeqs) -> dict[str, int]:
    """{conversation id: latest seq} of the user's conversations. ``load_all`` reads both from
    the database (a miss), ``load_seqs`` the seqs of the conversations whose seq is missing."""
    if not redis_client.cluster_mode():
        return await load_all(user_id)
    tag = _user_tag(user_id)
    try:
        seen = await guarded_cache.read(tag, TOPICS)
    except RedisError as exc:
        logger.debug("topics cache read failed", extra={"error": exc.__class__.__name__})
        return await load_all(user_id)
    if seen.value is None:
        seqs = await load_all(user_id)
        try:
            await guarded_cache.fill(tag, TOPICS, ",".join(seqs), seen)
            await guarded_cache.raise_to([(_conversation_tag(cid), SEQ, seq) for cid, seq in seqs.items()])
        except RedisError as exc:
            logger.debug("topics cache fill failed", extra={"error": exc.__class__.__name__})
        return seqs
    cids = seen.value.split(",") if seen.value else []
    try:
        values = await guarded_cache.read_many([(_conversation_tag(cid), SEQ) for cid in cids])
    except RedisError as exc:
        logger.debug("seq cache read failed", extra={"error": exc.__class__.__name__})
        values = [None] * len(cids)
    result = {cid: int(value) for cid, value in zip(cids, values, strict=True) if value is not None}
    missing = [cid for cid in cids if cid not in result]
    if missing:
        fetched = await load_seqs(missing)
        result.update(fetched)
        try:
            await guarded_cache.raise_to([(_conversation_tag(cid), SEQ, seq) for cid, seq in fetched.items()])
        except RedisError as exc:
            logger.debug("seq cache fill failed", extra={"error": exc.__class__.__name__})
    return result


# --- kept by the writers ------------------------------------------------------------------------


def memberships_changed(user_ids: Iterable[int]) -> None:
    """The conversations of these users changed: forget them now (a Redis fault fails the
    write) and again after commit (a rebuild that read the old rows in between is refused)."""
    if not redis_client.cluster_mode():
        return
    items = [(_user_tag(uid), TOPICS) for uid in dict.fromkeys(user_ids)]
    guarded_cache.invalidate_many_sync(items)

    def again() -> None:
        try:
            guarded_cache.invalidate_many_sync(items)
        except RedisError as exc:
            logger.warning("topics cache invalidation failed", extra={"error": exc.__class__.__name__})

    transaction.on_commit(again)


def seq_advanced(conversation_id: object, seq: int) -> None:
    """After commit, raise the conversation's cached seq. Registered before the event's own
    publish, so the seq is raised before any instance sees the message."""
    if not redis_client.cluster_mode():
        return
    items = [(_conversation_tag(conversation_id), SEQ, int(seq))]

    def after_commit() -> None:
        if defer_to_loop(lambda: aseq_advanced(conversation_id, seq)):
            return
        try:
            guarded_cache.raise_to_sync(items)
        except RedisError as exc:
            logger.debug("seq cache update failed", extra={"error": exc.__class__.__name__})

    transaction.on_commit(after_commit)


async def aseq_advanced(conversation_id: object, seq: int) -> None:
    """:func:`seq_advanced` from the event loop, for a seq already committed."""
    if redis_client.cluster_mode():
        try:
            await guarded_cache.raise_to([(_conversation_tag(conversation_id), SEQ, int(seq))])
        except RedisError as exc:
            logger.debug("seq cache update failed", extra={"error": exc.__class__.__name__})


# --- signals: writers outside the services (admin, shell, fixtures) -----------------------------


def on_participant_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if created:
        memberships_changed([instance.user_id])


def on_participant_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    memberships_changed([instance.user_id])


def on_message_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if created:
        seq_advanced(instance.conversation_id, instance.seq)


def on_conversation_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if update_fields is None or "last_seq" in update_fields:
        seq_advanced(instance.pk, instance.last_seq)


def connect_signals() -> None:
    from django.db.models.signals import post_delete, post_save

    from .models import Conversation, Message, Participant

    post_save.connect(on_participant_saved, sender=Participant, dispatch_uid="chat-topics-participant-add")
    post_delete.connect(on_participant_deleted, sender=Participant, dispatch_uid="chat-topics-participant-remove")
    post_save.connect(on_message_saved, sender=Message, dispatch_uid="chat-topics-message")
    post_save.connect(on_conversation_saved, sender=Conversation, dispatch_uid="chat-topics-conversation")
