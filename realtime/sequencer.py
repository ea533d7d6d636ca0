"""Ordered, gap-free delivery of numbered streams (a conversation's messages by ``seq``).

Events can arrive out of order (two senders on two instances) or not at all (published while the
bus reconnected). The sequencer releases each stream's items in seq order, each once: an item
after a gap is held briefly for the missing ones, then the gap is filled with ``fetch`` (from
the database); ``catch_up`` fills up to a known latest seq after a bus outage.

It knows nothing of Redis, sockets or the ORM: ``fetch(stream, after_seq, limit)`` returns
``[(seq, item), ...]`` and ``release(stream, seq, item)`` hands an item on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("realtime.sequencer")

GAP_WAIT_SECONDS = 0.5
FETCH_MAX = 500

Fetch = Callable[[str, int, int], Awaitable[list[tuple[int, Any]]]]
Release = Callable[[str, int, Any], None]


class Sequencer:
    def __init__(self, fetch: Fetch, release: Release, *, gap_wait: float = GAP_WAIT_SECONDS) -> None:
        self.fetch = fetch
        self.release = release
        self.gap_wait = gap_wait
        self.last: dict[str, int] = {}
        self.pending: dict[str, dict[int, Any]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.behind: dict[str, int] = {}  # stream -> latest seq seen ahead of delivery last sweep

    def open(self, stream: str, last_seq: int) -> None:
        """Start following ``stream`` after ``last_seq``; a stream already followed keeps its
        cursor (moving it could skip items still being reordered)."""
        self.last.setdefault(stream, last_seq)

    def close(self, stream: str) -> None:
        self.last.pop(stream, None)
        self.pending.pop(stream, None)
        task = self.tasks.pop(stream, None)
        if task is not None:
            task.cancel()

    def following(self, stream: str) -> bool:
        return stream in self.last

    def offer(self, stream: str, seq: int, item: Any) -> None:
        """One item arrived: release it (and what it unblocks) or hold it behind a gap."""
        last = self.last.get(stream)
        if last is None or seq <= last:
            return  # not followed here, already released, or older than what clients resumed from
        if seq > last + 1:
            self.pending.setdefault(stream, {})[seq] = item
            self._fill(stream)
            return
        self._release(stream, seq, item)
        self._release_pending(stream)

    def catch_up(self, latest: dict[str, int]) -> None:
        """Streams whose latest seq is known to be ahead (items never arrived): fill them."""
        for stream, seq in latest.items():
            if stream in self.last and seq > self.last[stream]:
                logger.info("catching up missed items", extra={"stream": stream, "upto": seq})
                self._fill(stream, upto=seq, wait=False)

    def sweep(self, latest: dict[str, int]) -> None:
        """Called every watchdog round with each stream's latest seq. A stream still behind what
        the previous round saw lost items with no later one to reveal the gap (the bus's
        subscriber reconnected between two probes, after a Sentinel failover, and missed what
        was published meanwhile): fill it. Items merely in flight are released by then."""
        behind: dict[str, int] = {}
        for stream, seq in latest.items():
            last = self.last.get(stream)
            if last is None or seq <= last:
                continue
            before = self.behind.get(stream)
            if before is not None and last < before:
                logger.info("filling items whose events were lost", extra={"stream": stream, "upto": before})
                self._fill(stream, upto=before, wait=False)
            behind[stream] = seq
        self.behind = behind

    def _release(self, stream: str, seq: int, item: Any) -> None:
        self.last[stream] = seq
        self.release(stream, seq, item)

    def _release_pending(self, stream: str) -> None:
        held = self.pending.get(stream)
        while held:
            nxt = self.last.get(stream, 0) + 1
            if nxt not in held:
                # Drop anything already behind the cursor; keep waiting for the gap otherwise.
                for stale in [s for s in held if s < nxt]:
                    held.pop(stale)
                break
            self._release(stream, nxt, held.pop(nxt))
        if not held:
            self.pending.pop(stream, None)
            task = self.tasks.get(stream)
            if task is not None and task is not asyncio.current_task():
                self.tasks.pop(stream, None)
                task.cancel()

    def _fill(self, stream: str, *, upto: int = 0, wait: bool = True) -> None:
        if stream not in self.tasks:
            self.tasks[stream] = asyncio.get_running_loop().create_task(self._fill_gap(stream, upto, wait))

    async def _fill_gap(self, stream: str, upto: int, wait: bool) -> None:
        """Wait briefly for the missing items, then fetch all of them up to the highest held
        seq (or up to ``upto`` for a catch-up)."""
        try:
            if wait:
                await asyncio.sleep(self.gap_wait)
            while stream in self.last:
                last = self.last[stream]
                held = self.pending.get(stream, {})
                end = max([upto, *(seq - 1 for seq in held)])
                if end <= last:
                    break
                rows = await self.fetch(stream, last, min(end - last, FETCH_MAX))
                if stream not in self.last:
                    break
                held = self.pending.setdefault(stream, {})
                for seq, item in rows:
                    held.setdefault(seq, item)
                if self.last[stream] == last and last + 1 not in held:
                    # Only when items were deleted: skip forward rather than stall the stream
                    # (clients page over HTTP by seq).
                    logger.warning("seq gap not fillable; skipping", extra={"stream": stream, "seq": last + 1})
                    self.last[stream] = (min(held) - 1) if held else end
                self._release_pending(stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("gap fill failed", extra={"stream": stream})
        finally:
            if self.tasks.get(stream) is asyncio.current_task():
                self.tasks.pop(stream, None)

    def reset(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        self.last.clear()
        self.pending.clear()
        self.behind.clear()
