"""Every frame type and every HTTP write has a cluster-wide budget per user; broadcasts that
repeat nothing are dropped; a sustained flood of valid frames closes the socket with 1008; a
flood of resumes cannot multiply the server's output. Two real uvicorn instances on one Redis:
a user's sockets on both share each budget."""

from __future__ import annotations

import pytest
from django.utils import timezone

from chat.models import Conversation, Message
from tests.factories import ConversationFactory
from tests.integration.conftest import open_ws
from tests.security.conftest import ahttp, assert_envelope

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BURST = 3
# A burst of 3 and a refill slow enough that no token comes back during a test.
TIGHT = f"1/m burst {BURST}"
SERVERS = {"a": "uvicorn", "b": "uvicorn"}
RESUME_TOTAL = 300
SERVER_ENV = {
    "RESUME_MAX_TOTAL_MESSAGES": str(RESUME_TOTAL),
    **{
        name: TIGHT
        for name in (
            "RATE_LIMIT_TYPING",
            "RATE_LIMIT_READS",
            "RATE_LIMIT_STATUS",
            "RATE_LIMIT_PRESENCE_SYNC",
            "RATE_LIMIT_PINGS",
            "RATE_LIMIT_RESUMES",
            "RATE_LIMIT_TICKETS",
            "RATE_LIMIT_CONVERSATIONS",
        )
    },
}


def frames(cid: str) -> dict[str, list[dict]]:
    """BURST + 1 valid frames of each budgeted type (alternating where a repeat is dropped)."""
    n = BURST + 1
    return {
        "typing": [{"type": "typing", "conversation_id": cid, "state": ("start", "stop")[i % 2]} for i in range(n)],
        "read": [{"type": "read", "conversation_id": cid, "seq": 0} for _ in range(n)],
        "status.set": [{"type": "status.set", "status": ("away", "busy")[i % 2]} for i in range(n)],
        "presence.sync": [{"type": "presence.sync"} for _ in range(n)],
        "ping": [{"type": "ping"} for _ in range(n)],
        "resume": [{"type": "resume", "cursors": {cid: 0}} for _ in range(n)],
    }


async def test_every_frame_type_has_a_budget_shared_by_the_users_sockets_on_every_instance(app, people):
    on_a = await open_ws(app.servers["a"].ws_url, people["alice"])
    on_b = await open_ws(app.servers["b"].ws_url, people["alice"])
    for frame_type, batch in frames(people["cid"]).items():
        # The burst is spent across both instances; the next frame on either is refused.
        for i, frame in enumerate(batch[:BURST]):
            ws = on_a if i % 2 == 0 else on_b
            reply = await ws.request({**frame, "id": f"{frame_type}-{i}"})
            assert reply["type"] in ("ack", "pong"), (frame_type, reply)
        refused = await on_b.request({**batch[BURST], "id": f"{frame_type}-over"})
        assert refused["type"] == "error", (frame_type, refused)
        assert_envelope(refused, 429, "rate_limited")
    await on_a.close()
    await on_b.close()


async def test_http_writes_have_budgets_and_share_them_with_the_socket(app, people):
    url, token, cid = app.servers["a"].url, people["bob"].token, people["cid"]
    calls = {
        "typing": ("POST", f"/api/conversations/{cid}/typing/", [{"state": "start"}, {"state": "stop"}]),
        "status": ("PUT", "/api/me/status/", [{"status": "away"}, {"status": "busy"}]),
        "read": ("POST", f"/api/conversations/{cid}/read/", [{"seq": 0}]),
        "ws-ticket": ("POST", "/api/auth/ws-ticket/", [None]),
        "conversation": ("POST", "/api/conversations/", [{"participant_ids": []}]),
    }
    for name, (method, path, bodies) in calls.items():
        for i in range(BURST):
            status, _, reply = await ahttp(method, url + path, token, bodies[i % len(bodies)])
            assert status < 300, (name, status, reply)
        status, headers, reply = await ahttp(method, url + path, token, bodies[BURST % len(bodies)])
        assert status == 429, (name, status, reply)
        assert_envelope(reply, 429, "rate_limited")
        assert int(headers["retry-after"]) >= 1
    # The socket's typing and status.set draw on the same budgets as HTTP's.
    ws = await open_ws(app.servers["b"].ws_url, people["bob"])
    for frame in (
        {"type": "typing", "id": "t", "conversation_id": cid, "state": "start"},
        {"type": "status.set", "id": "s", "status": "online"},
    ):
        assert_envelope(await ws.request(frame), 429, "rate_limited")
    await ws.close()


async def test_a_repeated_typing_state_is_not_broadcast_again(app, people):
    cid = people["cid"]
    alice = await open_ws(app.servers["a"].ws_url, people["alice"])
    bob = await open_ws(app.servers["b"].ws_url, people["bob"])
    acks = []
    for i, state in enumerate(("start", "start", "stop")):
        acks.append(await alice.request({"type": "typing", "id": str(i), "conversation_id": cid, "state": state}))
    assert [a["broadcast"] for a in acks] == [True, False, True]
    seen = []
    try:
        while True:
            frame = await bob.expect_type("typing", timeout=1.5)
            seen.append(frame["state"])
    except TimeoutError:
        pass
    assert seen == ["start", "stop"]
    await alice.close()
    await bob.close()


async def test_a_sustained_flood_of_valid_frames_closes_the_socket_with_1008(app, people):
    ws = await open_ws(app.servers["a"].ws_url, people["carol"])
    for i in range(60):
        try:
            await ws.send({"type": "ping", "id": str(i)})
        except Exception:
            break  # closed under us
    assert await ws.closed_code(10) == 1008
    pongs = [f for f in ws.backlog if f["type"] == "pong"]
    assert len(pongs) == BURST


def _fill(conv: Conversation, count: int, sender_id: int) -> None:
    now = timezone.now()
    Message.objects.bulk_create(
        [
            Message(conversation=conv, seq=i, sender_id=sender_id, body="x" * 1000, created_at=now)
            for i in range(1, count + 1)
        ]
    )
    Conversation.objects.filter(pk=conv.pk).update(last_seq=count)


async def test_a_flood_of_resumes_sends_at_most_the_budget_of_backlogs(app, people):
    from asgiref.sync import sync_to_async

    count = 200
    await sync_to_async(_fill)(people["conv"], count, people["alice"].pk)
    ws = await open_ws(app.servers["a"].ws_url, people["bob"])
    for i in range(10):
        await ws.send({"type": "resume", "id": f"r{i}", "cursors": {people["cid"]: 0}})
    replies: dict[str, dict] = {}
    delivered = 0
    while len(replies) < 10:
        frame = await ws.recv(10)
        if frame["type"] == "message.new":
            delivered += 1
        elif frame.get("id", "").startswith("r"):
            replies[frame["id"]] = frame
    acks = [f for f in replies.values() if f["type"] == "ack"]
    refused = [f for f in replies.values() if f["type"] == "error"]
    assert len(acks) == BURST
    assert len(refused) == 10 - BURST
    for err in refused:
        assert_envelope(err, 429, "rate_limited")
    assert delivered == BURST * count
    # The socket still serves everything else.
    ack = await ws.request({"type": "message.send", "id": "m", "conversation_id": people["cid"], "body": "hi"})
    assert ack["type"] == "ack"
    await ws.close()


async def test_one_resume_frame_sends_at_most_its_total_and_truncates_the_rest(app, people):
    from asgiref.sync import sync_to_async

    alice, bob = people["alice"], people["bob"]

    def three_full_conversations() -> list[str]:
        convs = [people["conv"], *(ConversationFactory(owner=alice, members=[bob]) for _ in range(2))]
        for conv in convs:
            _fill(conv, 200, alice.pk)
        return [str(c.id) for c in convs]

    cids = await sync_to_async(three_full_conversations)()
    ws = await open_ws(app.servers["a"].ws_url, bob)
    await ws.send({"type": "resume", "id": "r", "cursors": {cid: 0 for cid in cids}})
    delivered: dict[str, int] = dict.fromkeys(cids, 0)
    truncated: dict[str, int] = {}
    while True:
        frame = await ws.recv(10)
        if frame["type"] == "message.new":
            delivered[frame["message"]["conversation_id"]] += 1
        elif frame["type"] == "resume.truncated":
            truncated[frame["conversation_id"]] = frame["next_seq"]
        elif frame.get("id") == "r":
            assert frame["type"] == "ack", frame
            break
    assert sum(delivered.values()) == RESUME_TOTAL
    assert delivered == {cids[0]: 200, cids[1]: 100, cids[2]: 0}
    assert truncated == {cids[1]: 101, cids[2]: 1}
    await ws.close()
