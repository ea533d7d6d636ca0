"""chatproject.db: work deferred from inside a db_call runs on the event loop before the caller
resumes, also when the call raises; outside a db_call nothing is deferred."""

from __future__ import annotations

import asyncio
import threading

import pytest

from chatproject.db import db_call, defer_to_loop


async def test_deferred_work_runs_on_the_loop_before_the_caller_resumes():
    loop_thread = threading.get_ident()
    ran: list[tuple[str, bool]] = []

    async def on_loop(tag: str) -> None:
        ran.append((tag, threading.get_ident() == loop_thread))

    def in_worker() -> str:
        assert threading.get_ident() != loop_thread
        assert defer_to_loop(lambda: on_loop("first"))
        assert defer_to_loop(lambda: on_loop("second"))
        return "result"

    assert await db_call(in_worker)() == "result"
    assert ran == [("first", True), ("second", True)]


async def test_deferred_work_runs_even_when_the_call_raises():
    ran: list[str] = []

    async def on_loop() -> None:
        ran.append("published")

    def fails_after_commit() -> None:
        defer_to_loop(on_loop)
        raise ValueError("after the commit")

    with pytest.raises(ValueError, match="after the commit"):
        await db_call(fails_after_commit)()
    assert ran == ["published"]


async def test_outside_a_db_call_nothing_is_deferred():
    async def never() -> None:
        raise AssertionError("not to be run")

    assert defer_to_loop(never) is False
    assert await asyncio.to_thread(defer_to_loop, never) is False
