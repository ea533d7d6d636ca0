"""finish_started: a send started eagerly in the hub's loop and finished by the socket's writer
task behaves as if it had run in a task from the start."""

from __future__ import annotations

import asyncio

import pytest

from realtime.session import finish_started


def start(coro):
    return coro, coro.send(None)


async def test_a_send_that_waits_completes_once_its_future_does():
    ready = asyncio.Event()
    done: list[str] = []

    async def send():
        await ready.wait()
        await asyncio.sleep(0)  # a bare yield after the wait
        done.append("sent")

    coro, blocker = start(send())
    task = asyncio.get_running_loop().create_task(finish_started(coro, blocker))
    await asyncio.sleep(0.01)
    assert not task.done() and done == []
    ready.set()
    await asyncio.wait_for(task, 2)
    assert done == ["sent"]


async def test_the_error_of_the_awaited_future_reaches_the_send():
    future = asyncio.get_running_loop().create_future()

    async def send():
        await future

    coro, blocker = start(send())
    task = asyncio.get_running_loop().create_task(finish_started(coro, blocker))
    future.set_exception(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError, match="gone"):
        await asyncio.wait_for(task, 2)


async def test_cancelling_the_writer_closes_the_send():
    closed: list[str] = []

    async def send():
        try:
            await asyncio.Event().wait()
        finally:
            closed.append("closed")

    coro, blocker = start(send())
    task = asyncio.get_running_loop().create_task(finish_started(coro, blocker))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["closed"]
