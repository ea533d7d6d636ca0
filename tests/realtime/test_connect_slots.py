"""Connect slots: a handshake keeps one slot from authentication to its hello."""

from __future__ import annotations

import asyncio

from realtime.admission import ConnectSlots


async def _handshake(slots: ConnectSlots, index: int, log: list[tuple[str, int]]) -> None:
    async with slots.for_handshake():
        async with slots.slot():  # authentication (the auth cache read)
            log.append(("auth", index))
            await asyncio.sleep(0.01)
        async with slots.slot():  # the consumer's connect work, then its hello
            await asyncio.sleep(0.01)
            log.append(("hello", index))
        slots.release_held()
        await asyncio.sleep(0.05)  # the socket lives on without its slot


async def test_a_storm_gets_hellos_from_the_start_not_after_every_authentication():
    slots = ConnectSlots(4)
    log: list[tuple[str, int]] = []
    await asyncio.wait_for(asyncio.gather(*(_handshake(slots, i, log) for i in range(40))), 10)
    first_hello = log.index(next(e for e in log if e[0] == "hello"))
    # The first hellos come while most sockets have not started authentication (with a slot
    # per step, the first came after all 40 authentications).
    assert sum(1 for kind, _ in log[:first_hello] if kind == "auth") <= 4
    assert sorted(i for kind, i in log if kind == "hello") == list(range(40))
    # Every slot is back.
    assert slots.get()._value == 4


async def test_work_outside_a_handshake_takes_a_slot_of_its_own():
    slots = ConnectSlots(1)
    async with slots.slot():
        assert slots.get().locked()
    assert not slots.get().locked()
