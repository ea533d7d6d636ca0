"""chat.services on the real database: the seq guarantee under concurrency (PostgreSQL, one
connection per thread) and the rules the HTTP tests do not reach."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from chat import services
from chat.models import Conversation, Message, Participant
from core.errors import Invalid, NotFound, NotParticipant, PermissionDenied, RateLimited
from tests.factories import ConversationFactory, UserFactory


@pytest.fixture
def high_rate_limit(settings: Any) -> None:
    settings.RATE_LIMIT_BURST = 100_000
    settings.RATE_LIMIT_PER_SECOND = 100_000.0


def run_concurrently(count: int, work: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``work(i)`` for i in range(count), each in its own thread with its own database
    connection, released together so they really contend."""
    barrier = threading.Barrier(count, timeout=60)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a sender hung"
    return results, errors


def message_frames(published: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [m["frame"]["message"] for _, m in published if m["frame"] and m["frame"]["type"] == "message.new"]


# --- The seq guarantee under concurrency -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_get_gap_free_unique_seqs(high_rate_limit, published):
    assert connection.vendor == "postgresql"
    senders = [UserFactory() for _ in range(5)]
    conversation = ConversationFactory(owner=senders[0], members=senders[1:])
    count = 60

    def work(i: int) -> services.SendResult:
        return services.message_send(
            sender_id=senders[i % len(senders)].pk, conversation_id=conversation.id, body=f"message {i}"
        )

    results, errors = run_concurrently(count, work)

    assert errors == []
    assert sorted(r.message.seq for r in results) == list(range(1, count + 1))
    assert not any(r.repeat for r in results)
    rows = list(Message.objects.filter(conversation=conversation).order_by("seq"))
    assert [m.seq for m in rows] == list(range(1, count + 1))
    assert sorted(m.body for m in rows) == sorted(f"message {i}" for i in range(count))
    conversation.refresh_from_db()
    assert conversation.last_seq == count
    # Each message was broadcast once, after its commit, with the seq it was stored with.
    broadcast = message_frames(published)
    assert sorted(m["seq"] for m in broadcast) == list(range(1, count + 1))
    assert {m["id"]: m["seq"] for m in broadcast} == {str(m.id): m.seq for m in rows}


@pytest.mark.django_db(transaction=True)
def test_concurrent_repeated_client_msg_ids_store_each_once(high_rate_limit, published):
    sender, other = UserFactory(), UserFactory()
    conversation = ConversationFactory(owner=sender, members=[other])
    count, distinct = 60, 20

    def work(i: int) -> services.SendResult:
        return services.message_send(
            sender_id=sender.pk,
            conversation_id=conversation.id,
            body=f"attempt {i}",
            client_msg_id=f"client-{i % distinct}",
        )

    results, errors = run_concurrently(count, work)

    assert errors == []
    rows = list(Message.objects.filter(conversation=conversation).order_by("seq"))
    assert len(rows) == distinct
    assert [m.seq for m in rows] == list(range(1, distinct + 1))
    assert sorted(m.client_msg_id for m in rows) == sorted(f"client-{k}" for k in range(distinct))
    by_client_id = {m.client_msg_id: m for m in rows}
    # Every attempt got the one stored message of its client_msg_id, and exactly one attempt
    # per client_msg_id stored it.
    for i, result in enumerate(results):
        stored = by_client_id[f"client-{i % distinct}"]
        assert (result.message.id, result.message.seq) == (stored.id, stored.seq)
    assert Counter(r.message.client_msg_id for r in results if not r.repeat) == Counter(
        {f"client-{k}": 1 for k in range(distinct)}
    )
    conversation.refresh_from_db()
    assert conversation.last_seq == distinct
    assert sorted(m["seq"] for m in message_frames(published)) == list(range(1, distinct + 1))


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_to_different_conversations_keep_separate_sequences(high_rate_limit):
    user = UserFactory()
    first, second = ConversationFactory(owner=user), ConversationFactory(owner=user)
    conversations = [first, second]

    def work(i: int) -> services.SendResult:
        return services.message_send(sender_id=user.pk, conversation_id=conversations[i % 2].id, body=str(i))

    _, errors = run_concurrently(50, work)

    assert errors == []
    for conversation in conversations:
        seqs = list(Message.objects.filter(conversation=conversation).order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, 26))


# --- Messages --------------------------------------------------------------------------------


@pytest.fixture
def owner(db: Any) -> Any:
    return UserFactory()


@pytest.fixture
def member(db: Any) -> Any:
    return UserFactory()


@pytest.fixture
def outsider(db: Any) -> Any:
    return UserFactory()


@pytest.fixture
def chat(owner: Any, member: Any) -> Conversation:
    return ConversationFactory(owner=owner, members=[member])


@pytest.mark.parametrize("body", [None, 5, 1.5, True, ["x"], {"t": "x"}, b"bytes"])
def test_send_refuses_a_body_that_is_not_a_string(owner, chat, body):
    with pytest.raises(Invalid) as info:
        services.message_send(sender_id=owner.pk, conversation_id=chat.id, body=body)
    assert set(info.value.errors or {}) == {"body"}
    assert not Message.objects.exists()


@pytest.mark.parametrize("client_msg_id", ["", "x" * 65, 5, ["k"], True])
def test_send_refuses_a_bad_client_msg_id(owner, chat, client_msg_id):
    with pytest.raises(Invalid) as info:
        services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="hi", client_msg_id=client_msg_id)
    assert set(info.value.errors or {}) == {"client_msg_id"}


@pytest.mark.parametrize("cid", ["", None, 42, "0" * 33, "not-a-uuid"])
def test_send_to_a_garbage_conversation_id_is_not_found(owner, cid):
    with pytest.raises(NotFound):
        services.message_send(sender_id=owner.pk, conversation_id=cid, body="hi")


def test_send_accepts_the_id_as_uuid_or_string(owner, chat):
    first = services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="a")
    second = services.message_send(sender_id=owner.pk, conversation_id=str(chat.id).upper(), body="b")
    assert (first.message.seq, second.message.seq) == (1, 2)
    assert second.message.conversation_id == chat.id


def test_send_by_a_non_participant_stores_nothing(outsider, chat):
    with pytest.raises(NotParticipant):
        services.message_send(sender_id=outsider.pk, conversation_id=chat.id, body="hi")
    chat.refresh_from_db()
    assert chat.last_seq == 0
    assert not Message.objects.exists()


def test_repeat_by_a_removed_participant_is_refused(owner, member, chat):
    services.message_send(sender_id=member.pk, conversation_id=chat.id, body="hi", client_msg_id="k")
    services.participant_remove(actor_id=owner.pk, conversation_id=chat.id, user_id=member.pk)
    with pytest.raises(NotParticipant):
        services.message_send(sender_id=member.pk, conversation_id=chat.id, body="hi", client_msg_id="k")


def test_repeat_returns_the_original_even_with_another_body(owner, chat):
    first = services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="first", client_msg_id="k")
    again = services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="second", client_msg_id="k")
    assert (first.repeat, again.repeat) == (False, True)
    assert again.message.pk == first.message.pk
    assert again.message.body == "first"


def test_same_client_msg_id_in_another_conversation_is_a_new_message(owner, chat):
    elsewhere = ConversationFactory(owner=owner)
    a = services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="a", client_msg_id="k")
    b = services.message_send(sender_id=owner.pk, conversation_id=elsewhere.id, body="b", client_msg_id="k")
    assert a.message.pk != b.message.pk
    assert (a.repeat, b.repeat) == (False, False)
    assert b.message.seq == 1


def test_sends_without_client_msg_id_are_never_merged(owner, chat):
    for _ in range(3):
        services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="same", client_msg_id=None)
    assert Message.objects.filter(conversation=chat).count() == 3


def test_rate_limit_is_per_user_and_spares_repeats(owner, member, chat, settings):
    settings.RATE_LIMIT_BURST = 2
    settings.RATE_LIMIT_PER_SECOND = 0.1
    services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="1", client_msg_id="one")
    services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="2")
    with pytest.raises(RateLimited) as info:
        services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="3")
    assert info.value.status == 429
    assert 0 < (info.value.retry_after or 0) <= 10
    assert services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="1", client_msg_id="one").repeat
    assert services.message_send(sender_id=member.pk, conversation_id=chat.id, body="mine").message.seq == 3


def test_rate_limit_in_single_mode_uses_the_process_bucket(owner, chat, settings):
    settings.CHAT_MODE = "single"
    settings.RATE_LIMIT_BURST = 1
    settings.RATE_LIMIT_PER_SECOND = 0.1
    services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="1")
    with pytest.raises(RateLimited):
        services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="2")


def test_rejected_send_leaves_no_gap(owner, outsider, chat, settings):
    services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="1")
    with pytest.raises(NotParticipant):
        services.message_send(sender_id=outsider.pk, conversation_id=chat.id, body="x")
    with pytest.raises(Invalid):
        services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="x" * (settings.MESSAGE_MAX_CHARS + 1))
    assert services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="2").message.seq == 2


# --- Conversations and participants -----------------------------------------------------------


@pytest.mark.parametrize("ids", [None, "1", [True], [1.0], [[1]], {"1": 1}])
def test_create_refuses_participant_ids_that_are_not_a_list_of_ids(owner, ids):
    with pytest.raises(Invalid) as info:
        services.conversation_create(creator_id=owner.pk, participant_ids=ids)
    assert set(info.value.errors or {}) == {"participant_ids"}
    assert not Conversation.objects.exists()


def test_create_refuses_more_than_a_thousand_participants(owner):
    with pytest.raises(Invalid):
        services.conversation_create(creator_id=owner.pk, participant_ids=list(range(1, 1002)))


@pytest.mark.parametrize("title", [None, 3, "t" * 201])
def test_create_refuses_a_bad_title(owner, title):
    with pytest.raises(Invalid) as info:
        services.conversation_create(creator_id=owner.pk, title=title, participant_ids=[])
    assert set(info.value.errors or {}) == {"title"}


def test_create_is_all_or_nothing(owner, member):
    with pytest.raises(Invalid):
        services.conversation_create(creator_id=owner.pk, participant_ids=[member.pk, 10**9])
    assert not Conversation.objects.exists()
    assert not Participant.objects.exists()


@pytest.mark.parametrize("user_id", [True, "5", 1.0, None])
def test_add_refuses_a_user_id_that_is_not_an_int(owner, chat, user_id):
    with pytest.raises(Invalid):
        services.participant_add(actor_id=owner.pk, conversation_id=chat.id, user_id=user_id)


def test_non_owner_cannot_add_even_themselves_again(member, outsider, chat):
    with pytest.raises(PermissionDenied):
        services.participant_add(actor_id=member.pk, conversation_id=chat.id, user_id=outsider.pk)
    with pytest.raises(NotParticipant):
        services.participant_add(actor_id=outsider.pk, conversation_id=chat.id, user_id=outsider.pk)


def test_added_user_can_send_at_once(owner, outsider, chat):
    _, created = services.participant_add(actor_id=owner.pk, conversation_id=chat.id, user_id=outsider.pk)
    assert created
    assert services.message_send(sender_id=outsider.pk, conversation_id=chat.id, body="hi").message.seq == 1


def test_removed_user_can_no_longer_send_read_or_type(owner, member, chat):
    services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="hi")
    services.participant_remove(actor_id=owner.pk, conversation_id=chat.id, user_id=member.pk)
    with pytest.raises(NotParticipant):
        services.message_send(sender_id=member.pk, conversation_id=chat.id, body="hi")
    with pytest.raises(NotParticipant):
        services.read_mark(user_id=member.pk, conversation_id=chat.id, seq=1)
    with pytest.raises(NotParticipant):
        services.typing_set(user_id=member.pk, conversation_id=chat.id, state="start")


def test_owner_leaving_promotes_the_successor_and_tells_the_leaver(
    owner, member, chat, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.participant_remove(actor_id=owner.pk, conversation_id=chat.id, user_id=owner.pk)
    chat.refresh_from_db()
    assert chat.owner_id == member.pk
    assert Participant.objects.get(conversation=chat, user=member).role == Participant.Role.OWNER
    controls = [(g, m["control"]) for g, m in published]
    leave = {"op": "leave", "conversation_id": str(chat.id), "user_id": owner.pk}
    assert (f"c.{chat.id}", leave) in controls
    assert (f"u.{owner.pk}", leave) in controls
    # The new owner has the owner's rights.
    newcomer = UserFactory()
    _, created = services.participant_add(actor_id=member.pk, conversation_id=chat.id, user_id=newcomer.pk)
    assert created


def test_member_leaving_keeps_the_owner(owner, member, chat):
    services.participant_remove(actor_id=member.pk, conversation_id=chat.id, user_id=str(member.pk))
    chat.refresh_from_db()
    assert chat.owner_id == owner.pk
    assert Participant.objects.get(conversation=chat, user=owner).role == Participant.Role.OWNER


def test_removing_from_a_missing_conversation_is_not_found(owner):
    with pytest.raises(NotFound):
        services.participant_remove(actor_id=owner.pk, conversation_id="nope", user_id=owner.pk)


# --- Reads and typing -----------------------------------------------------------------------


@pytest.mark.parametrize("seq", [True, "1", 1.0, -1, None])
def test_read_refuses_a_seq_that_is_not_a_whole_number(owner, chat, seq):
    services.message_send(sender_id=owner.pk, conversation_id=chat.id, body="hi")
    with pytest.raises(Invalid) as info:
        services.read_mark(user_id=owner.pk, conversation_id=chat.id, seq=seq)
    assert set(info.value.errors or {}) == {"seq"}


def test_read_of_zero_changes_nothing(owner, chat, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        result = services.read_mark(user_id=owner.pk, conversation_id=chat.id, seq=0)
    assert (result.seq, result.read_at) == (0, None)
    assert not [m for _, m in published if m["frame"] and m["frame"]["type"] == "read"]


def test_read_moves_forward_only(owner, chat, published, django_capture_on_commit_callbacks):
    for i in range(3):
        services.message_send(sender_id=owner.pk, conversation_id=chat.id, body=str(i))
    with django_capture_on_commit_callbacks(execute=True):
        first = services.read_mark(user_id=owner.pk, conversation_id=chat.id, seq=2)
        back = services.read_mark(user_id=owner.pk, conversation_id=chat.id, seq=1)
        forward = services.read_mark(user_id=owner.pk, conversation_id=chat.id, seq=3)
    assert (first.seq, forward.seq) == (2, 3)
    assert (back.seq, back.read_at) == (2, first.read_at)
    reads = [m["frame"]["seq"] for _, m in published if m["frame"] and m["frame"]["type"] == "read"]
    assert reads == [2, 3]
    assert Participant.objects.get(conversation=chat, user=owner).last_read_seq == 3


@pytest.mark.parametrize("state", ["START", "typing", None, 1, ""])
def test_typing_refuses_an_unknown_state(owner, chat, state):
    with pytest.raises(Invalid):
        services.typing_set(user_id=owner.pk, conversation_id=chat.id, state=state)


def test_typing_is_not_broadcast_over_the_participant_limit(
    owner, chat, settings, published, django_capture_on_commit_callbacks
):
    settings.TYPING_MAX_PARTICIPANTS = 2
    with django_capture_on_commit_callbacks(execute=True):
        assert services.typing_set(user_id=owner.pk, conversation_id=chat.id, state="start") is True
        services.participant_add(actor_id=owner.pk, conversation_id=chat.id, user_id=UserFactory().pk)
        assert services.typing_set(user_id=owner.pk, conversation_id=chat.id, state="start") is False
    assert [m["frame"]["type"] for _, m in published if m["frame"] and m["frame"]["type"] == "typing"] == ["typing"]


# --- WebSocket tickets ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cluster", "single"])
def test_ticket_is_single_use_in_either_mode(owner, settings, mode):
    settings.CHAT_MODE = mode
    ticket = services.ws_ticket_issue(user_id=owner.pk)
    assert services.ws_ticket_consume(ticket=ticket) == owner.pk
    assert services.ws_ticket_consume(ticket=ticket) is None


def test_single_mode_ticket_expires(owner, settings, monkeypatch):
    settings.CHAT_MODE = "single"
    ticket = services.ws_ticket_issue(user_id=owner.pk)
    later = timezone.now() + timedelta(seconds=settings.WS_TICKET_TTL_SECONDS + 1)
    monkeypatch.setattr(services.timezone, "now", lambda: later)
    assert services.ws_ticket_consume(ticket=ticket) is None


@pytest.mark.django_db
def test_a_resume_costs_one_query_when_up_to_date_and_one_more_per_conversation_behind(
    high_rate_limit, django_assert_num_queries
):
    from chat import selectors
    from core.errors import NotParticipant
    from tests.factories import ConversationFactory, UserFactory

    alice, bob, eve = UserFactory(), UserFactory(), UserFactory()
    convs = [ConversationFactory(owner=alice, members=[bob]) for _ in range(5)]
    for i, conv in enumerate(convs):
        for n in range(i):
            services.message_send(sender_id=alice.pk, conversation_id=conv.id, body=f"m{n}")
    latest = {str(conv.id): i for i, conv in enumerate(convs)}
    with django_assert_num_queries(1):
        batches = selectors.resume_messages(user_id=bob.pk, cursors=latest, per_conversation=100, total=1000)
    assert [(cid, rows, truncated) for cid, rows, truncated in batches] == [(cid, [], False) for cid in latest]
    # Conversations 3 and 4 are behind (by 1 and by 4): one more query each.
    cursors = {**latest, str(convs[3].id): 2, str(convs[4].id): 0}
    with django_assert_num_queries(3):
        batches = selectors.resume_messages(user_id=bob.pk, cursors=cursors, per_conversation=3, total=1000)
    got = {cid: ([m.seq for m in rows], truncated) for cid, rows, truncated in batches}
    assert got[str(convs[3].id)] == ([3], False)
    assert got[str(convs[4].id)] == ([1, 2, 3], True)
    assert got[str(convs[2].id)] == ([], False)
    # Participation is checked for every conversation before anything is read.
    with pytest.raises(NotParticipant):
        selectors.resume_messages(user_id=eve.pk, cursors=cursors, per_conversation=3, total=1000)
