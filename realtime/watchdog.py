"""Never open and deaf: the fan-out path is probed, and sockets are closed when it is lost.

Every ``INTERVAL`` a probe goes through the bus's group delivery back to this instance. After
``FAILURES_TO_CLOSE`` failed probes every local socket is closed with 1011, so clients reconnect
and resume on an instance whose path works, and new sockets are refused until it is back. When
probes pass again, groups are re-added (a Redis that restarted empty forgot them) and missed
items are caught up from the database; groups are also refreshed every ``REFRESH_SECONDS``.
A bus that resubscribes by itself (Redis Cluster after a failover) triggers the same catch-up.
Every round also sweeps for streams left behind by an event lost without a failed probe.
"""

from __future__ import annotations

import asyncio
import logging
import time

from core import metrics

from .protocol import CloseCode
from .router import Router, router

logger = logging.getLogger("realtime.watchdog")

INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 2.0
FAILURES_TO_CLOSE = 2
REFRESH_SECONDS = 30.0


class Watchdog:
    def __init__(self, router: Router) -> None:
        self.router = router
        router.bus.add_resubscribe_listener(self.after_resubscribe)

    async def probe(self, timeout: float = PROBE_TIMEOUT_SECONDS) -> float:
        """A real round trip through the bus; the latency in seconds, or raises."""
        return await self.router.bus.probe(self.router.instance_group, timeout)

    async def after_resubscribe(self) -> None:
        metrics.LAYER_RECONNECTS.inc()
        await self.router.catch_up()

    async def run(self) -> None:
        """The watchdog loop (a runtime loop)."""
        failures = 0
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(INTERVAL_SECONDS)
            try:
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                metrics.LAYER_ERRORS.labels(op="probe").inc()
                logger.warning("fan-out probe failed", extra={"failures": failures, "error": exc.__class__.__name__})
                if failures >= FAILURES_TO_CLOSE and self.router.healthy:
                    self.router.healthy = False
                    count = self.router.close_all(CloseCode.FANOUT_LOST)
                    logger.error("fan-out path lost; closing local sockets", extra={"sockets": count})
                # A Redis that restarted empty forgot our groups (core layer): the probe only
                # passes again once they are back. Stops at the first error (bounded).
                await self.router.resubscribe_all()
                continue
            if failures or not self.router.healthy:
                logger.info("fan-out path back", extra={"after_failures": failures})
                metrics.LAYER_RECONNECTS.inc()
                await self.router.resubscribe_all()
                await self.router.catch_up()
                last_refresh = time.monotonic()
            failures = 0
            self.router.healthy = True
            await self.router.sweep_lagging()
            if time.monotonic() - last_refresh > REFRESH_SECONDS:
                await self.router.resubscribe_all()
                await self.router.catch_up()
                last_refresh = time.monotonic()


watchdog = Watchdog(router)
