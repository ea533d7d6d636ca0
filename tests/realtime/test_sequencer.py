"""The sequencer alone: seq order, each item once, gap fill and catch-up through ``fetch``,
with no Redis and no database (a fetch over a plain list stands in for the message table)."""

from __future__ import annotations

import asyncio

from realtime.sequencer import Sequencer


class Stream:
    def __init__(self, stored: list[int]) -> None:
        self.stored = stored
        self.released: list[tuple[str, int, str]] = []
        self.fetches: list[tuple[str, int, int]] = []
        self.seq = Sequencer(self.fetch, self.release, gap_wait=0.05)

    async def fetch(self, stream: str, after: int, limit: int) -> list[tuple[int, str]]:
        self.fetches.append((stream, after, limit))
        return [(s, f"db{s}") for s in self.stored if s > after][:limit]

    def release(self, stream: str, seq: int, item: str) -> None:
        self.released.append((stream, seq, item))


async def test_in_order_items_are_released_at_once_and_only_once():
    s = Stream([])
    s.seq.open("c", 0)
    for n in (1, 2, 2, 3, 1):
        s.seq.offer("c", n, f"ev{n}")
    assert s.released == [("c", 1, "ev1"), ("c", 2, "ev2"), ("c", 3, "ev3")]
    assert s.fetches == []


async def test_out_of_order_items_wait_for_the_missing_one():
    s = Stream([])
    s.seq.open("c", 0)
    s.seq.offer("c", 3, "ev3")
    s.seq.offer("c", 2, "ev2")
    assert s.released == []
    s.seq.offer("c", 1, "ev1")
    assert [r[1] for r in s.released] == [1, 2, 3]
    await asyncio.sleep(0.1)
    assert s.fetches == [], "the gap closed by itself: nothing to fetch"


async def test_a_gap_that_stays_is_filled_from_fetch_in_order():
    s = Stream([1, 2, 3, 4])
    s.seq.open("c", 0)
    s.seq.offer("c", 4, "ev4")
    await asyncio.sleep(0.2)
    assert s.released == [("c", 1, "db1"), ("c", 2, "db2"), ("c", 3, "db3"), ("c", 4, "ev4")]
    assert s.fetches == [("c", 0, 3)]


async def test_an_unfillable_gap_is_skipped_rather_than_stalling_the_stream():
    s = Stream([3])  # 1 and 2 were deleted
    s.seq.open("c", 0)
    s.seq.offer("c", 3, "ev3")
    await asyncio.sleep(0.2)
    assert [r[1] for r in s.released] == [3]
    s.seq.offer("c", 4, "ev4")
    assert [r[1] for r in s.released] == [3, 4]


async def test_catch_up_fetches_what_never_arrived_without_waiting():
    s = Stream([1, 2, 3])
    s.seq.open("c", 0)
    s.seq.open("other", 0)
    s.seq.catch_up({"c": 3, "other": 0, "unfollowed": 9})
    await asyncio.sleep(0.02)  # less than gap_wait: a catch-up does not wait
    assert [r[1] for r in s.released] == [1, 2, 3]
    assert s.fetches == [("c", 0, 3)]


async def test_a_followed_stream_keeps_its_cursor_and_a_closed_one_forgets_it():
    s = Stream([])
    s.seq.open("c", 5)
    s.seq.open("c", 0)  # a second socket joining does not move the cursor back
    s.seq.offer("c", 5, "old")
    s.seq.offer("c", 6, "ev6")
    assert [r[1] for r in s.released] == [6]
    s.seq.close("c")
    s.seq.offer("c", 7, "ev7")
    assert [r[1] for r in s.released] == [6]
