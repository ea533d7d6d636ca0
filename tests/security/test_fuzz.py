"""Fuzzing the frame parser and handlers through real connections to real server processes.

Each case sends one generated frame (a random or mutated JSON object, raw text, a deep nesting,
a binary frame) to an instance under uvicorn or daphne, then a ping. Whatever the frame, the
server answers no 500, every error frame is the contract's envelope, a frame with a usable id
gets its answer, and the socket is never left open and deaf: the ping gets its pong, or the
socket was closed (1008 for abuse, 1009 for size), after which the next case reconnects.

Bounded for CI: FUZZ_EXAMPLES cases (200 by default). FUZZ_SECONDS=600 runs batches of random
cases until that many seconds have passed (the long run), then reports the count.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.factories import ConversationFactory
from tests.integration.conftest import WS, open_ws

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "0"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300 + FUZZ_SECONDS),  # a long run outlasts the suite's per-test timeout
]
# Budgets out of the way: the handlers behind them are what is fuzzed (tests/security/
# test_budgets.py proves the budgets). The abuse close (1008) still comes with invalid frames.
SERVER_ENV = {
    name: "100000/s burst 100000"
    for name in (
        "RATE_LIMIT_MESSAGES",
        "RATE_LIMIT_TYPING",
        "RATE_LIMIT_READS",
        "RATE_LIMIT_STATUS",
        "RATE_LIMIT_PRESENCE_SYNC",
        "RATE_LIMIT_PINGS",
        "RATE_LIMIT_RESUMES",
    )
}
SERVERS = {"uvicorn": "uvicorn", "daphne": "daphne"}
FRAME_TYPES = ["message.send", "typing", "read", "status.set", "presence.sync", "ping", "resume"]
DEAF_SECONDS = 5.0  # far beyond any answer's time on an idle machine
CLOSES_ALLOWED = {1008, 1009}  # abuse (strikes), a frame over WS_MAX_FRAME_BYTES
TRICKY = ["\ud83d", "\udc00", "\x00", "\U0001f600", "\u202e", "\ufeff", "\\", '"', "\u0085", "\u2028"]


def strategies(cids: list[str]) -> st.SearchStrategy[str | bytes]:
    texts = st.one_of(
        st.text(max_size=40),
        st.lists(st.one_of(st.text(max_size=6), st.sampled_from(TRICKY)), max_size=8).map("".join),
        st.integers(3990, 4010).map(lambda n: "x" * n),
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(),
        texts,
    )
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
        max_leaves=10,
    )
    conversation_ids = st.one_of(st.sampled_from(cids), st.uuids().map(str), values)
    fields = {
        "id": st.one_of(st.text(max_size=70), texts, values),
        "conversation_id": conversation_ids,
        "body": st.one_of(texts, values),
        "client_msg_id": st.one_of(st.text(max_size=70), texts, values),
        "state": st.one_of(st.sampled_from(["start", "stop"]), values),
        "seq": st.one_of(st.integers(-2, 20), st.integers(), values),
        "status": st.one_of(st.sampled_from(["online", "away", "busy", "invisible", "offline"]), values),
        "text": st.one_of(texts, values),
        "cursors": st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(cids), texts), st.one_of(st.integers(-1, 30), values), max_size=3
            ),
            values,
        ),
    }
    frames = st.builds(
        lambda base, extra: {**extra, **base},
        st.fixed_dictionaries({"type": st.one_of(st.sampled_from(FRAME_TYPES), values)}, optional=fields),
        st.dictionaries(texts, values, max_size=2),
    )
    encoded = frames.map(lambda f: json.dumps(f, ensure_ascii=True))

    def mutate(text: str, where: int, op: int, piece: str) -> str:
        at = where % (len(text) + 1)
        if op == 0:
            return text[:at]  # truncated
        if op == 1:
            return text[:at] + piece + text[at:]  # inserted
        if op == 2:
            return text[:at] + text[at + len(piece) + 1 :]  # a range deleted
        return text[:at] + piece + text[at + len(piece) :]  # overwritten

    mutated = st.builds(mutate, encoded, st.integers(0, 10_000), st.integers(0, 3), st.text(max_size=6))
    # Up to about 120 KB: past WS_MAX_FRAME_BYTES (1009 from the consumer), within the servers'
    # own frame limits (what a server does past those is not the frame parser's behaviour).
    nested = st.builds(
        lambda n, opener: '{"type":"ping","x":' + opener * n + ("]" if opener == "[" else "}") * n + "}",
        st.integers(0, 40_000),
        st.sampled_from(["[", '{"a":']),
    ).map(lambda text: text if len(text) <= 120_000 else text[:19] + "[" * 20_000 + "]" * 20_000 + "}")
    return st.one_of(
        encoded,
        encoded,
        encoded,
        mutated,
        mutated,
        st.text(max_size=200),
        nested,
        st.binary(max_size=64),
    )


def usable_id(payload: str | bytes) -> str | None:
    """The id the server must answer to, when the payload is a frame carrying a sendable one."""
    if not isinstance(payload, str):
        return None
    try:
        frame = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(frame, dict):
        return None
    rid = frame.get("id")
    if isinstance(rid, str) and len(rid) <= 64 and not any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in rid):
        return rid
    return None


def check_frame(frame: Any) -> None:
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
    if frame["type"] == "error":
        assert "id" in frame, frame
        assert isinstance(frame["status"], int) and 400 <= frame["status"] < 500, frame
        assert isinstance(frame["code"], str) and frame["code"], frame
        assert isinstance(frame["detail"], str) and frame["detail"], frame
        if frame["status"] == 400:
            assert isinstance(frame["errors"], dict), frame
        if frame["status"] == 429:
            assert frame["retry_after"] > 0, frame


class Fuzzer:
    def __init__(self, url: str, user: Any) -> None:
        self.url, self.user = url, user
        self.ws: WS | None = None
        self.cases = self.closes = 0

    async def case(self, payload: str | bytes) -> None:
        if self.ws is None:
            self.ws = await open_ws(self.url, self.user)
        ws, probe = self.ws, f"probe-{uuid.uuid4()}"
        expected = usable_id(payload)
        answered = False
        self.cases += 1
        try:
            await ws.conn.send(payload)
            await ws.send({"type": "ping", "id": probe})
            deadline = time.monotonic() + DEAF_SECONDS
            while True:
                frame = await ws.recv(max(0.1, deadline - time.monotonic()))
                check_frame(frame)
                if expected is not None and frame.get("id") == expected and frame["type"] in ("ack", "error", "pong"):
                    answered = True
                if frame.get("id") == probe:
                    assert frame["type"] == "pong", frame
                    break
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            assert code in CLOSES_ALLOWED, f"closed with {code} after {payload[:200]!r}"
            self.ws, self.closes = None, self.closes + 1
            return
        except TimeoutError:
            self.ws = None  # the next case starts on a new socket
            await ws.conn.close()
            pytest.fail(f"open and deaf: no pong after {payload[:200]!r}")
        assert expected is None or answered, f"no answer to id {expected!r} for {payload[:200]!r}"


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_random_and_mutated_frames_get_no_500_and_leave_no_deaf_socket(app, people, kind):
    server = app.servers[kind]
    other = ConversationFactory(owner=people["carol"])  # alice is not a participant
    cids = [people["cid"], str(other.id)]
    fuzzer = Fuzzer(server.ws_url, people["alice"])
    loop = asyncio.new_event_loop()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # No shrinking: each failing case already names its payload, and shrinking a deaf socket
        # would wait DEAF_SECONDS per attempt.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(payload=strategies(cids))
    def one(payload: str | bytes) -> None:
        loop.run_until_complete(fuzzer.case(payload))

    started = time.monotonic()
    try:
        one()
        while FUZZ_SECONDS and time.monotonic() - started < FUZZ_SECONDS:
            one()
    finally:
        if fuzzer.ws is not None:
            loop.run_until_complete(fuzzer.ws.close())
        loop.close()
    failures = [line for line in server.logs().splitlines() if "frame handler failed" in line]
    assert not failures, failures[:3]
    print(f"fuzz ({kind}): {fuzzer.cases} cases, {fuzzer.closes} closes, {time.monotonic() - started:.0f} s, no 500")
