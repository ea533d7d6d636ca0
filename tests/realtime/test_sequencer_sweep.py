"""Sequencer.sweep: a stream left behind by a lost event, with no later item to reveal the gap,
is filled on the next sweep; an item merely in flight is not fetched."""

from __future__ import annotations

import asyncio

from realtime.sequencer import Sequencer


def _sequencer() -> tuple[Sequencer, list[tuple[str, int]], list[tuple[str, int, int]]]:
    released: list[tuple[str, int]] = []
    fetches: list[tuple[str, int, int]] = []

    async def fetch(stream: str, after: int, limit: int) -> list[tuple[int, str]]:
        fetches.append((stream, after, limit))
        return [(seq, f"item {seq}") for seq in range(after + 1, after + limit + 1)]

    return Sequencer(fetch, lambda stream, seq, item: released.append((stream, seq))), released, fetches


async def test_a_stream_still_behind_after_a_sweep_is_filled():
    seq, released, fetches = _sequencer()
    seq.open("c1", 5)
    seq.sweep({"c1": 6})  # seen ahead once: could be in flight
    await asyncio.sleep(0)
    assert fetches == [] and released == []
    seq.sweep({"c1": 7})  # still behind what the last sweep saw: lost
    await asyncio.sleep(0.05)
    assert fetches == [("c1", 5, 1)]
    assert released == [("c1", 6)]


async def test_an_item_that_arrives_between_sweeps_is_not_fetched():
    seq, released, fetches = _sequencer()
    seq.open("c1", 5)
    seq.sweep({"c1": 6})
    seq.offer("c1", 6, "item 6")  # the event arrived
    seq.sweep({"c1": 6})
    await asyncio.sleep(0.05)
    assert fetches == []
    assert released == [("c1", 6)]
