"""The process: background loops, start-up and the SIGTERM drain.

Apps register what they need in ``AppConfig.ready()``::

    runtime.on_start("realtime.router", router.start)      # awaited before the loops start
    runtime.register_loop("presence.grace", grace_loop)     # a coroutine function run forever
    runtime.on_drain("realtime.sessions", close_sessions)   # awaited, in order, on SIGTERM

The ASGI ``lifespan`` protocol starts them under uvicorn, before the first request; daphne has no
lifespan, so the first HTTP request or WebSocket starts them instead (``RuntimeStarter``). Either
way an instance that serves only HTTP still heartbeats, reaps and drains its outboxes.

On SIGTERM the instance tells the load balancer first: ``draining`` is set at once (health answers
503 ``draining`` and new handshakes are refused with HTTP 503), ``DRAIN_NOTICE_SECONDS`` later the
drain hooks run (sockets closed with 1012, registry entries removed), then the server's own shutdown (uvicorn closes its
listener and waits for connections). Whatever still hangs after 9 s is cut short by ``os._exit``,
so the process is gone within the 10 s the contract allows.

Tests run one event loop per test: a runtime asked to start on a new loop forgets the old one.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("core.runtime")

Hook = Callable[[], Coroutine[Any, Any, None]]
ASGIApp = Callable[..., Awaitable[None]]

EXIT_DEADLINE_SECONDS = 9.0
DRAIN_HOOK_TIMEOUT_SECONDS = 3.0
DRAIN_TIMEOUT_SECONDS = 6.0


@dataclass(frozen=True)
class _Named:
    name: str
    hook: Hook


class Runtime:
    def __init__(self) -> None:
        self._start_hooks: list[_Named] = []
        self._loops: list[_Named] = []
        self._drain_hooks: list[_Named] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.draining = False
        self._start_lock: asyncio.Lock | None = None
        self._drained: asyncio.Task[None] | None = None

    # --- registration (AppConfig.ready) --------------------------------------------------------

    def on_start(self, name: str, hook: Hook) -> None:
        """``hook`` is awaited (in registration order) before the loops start."""
        self._add(self._start_hooks, name, hook)

    def register_loop(self, name: str, loop: Hook) -> None:
        """``loop`` runs for the life of the process; it handles its own errors."""
        self._add(self._loops, name, loop)

    def on_drain(self, name: str, hook: Hook) -> None:
        """``hook`` is awaited on SIGTERM (in registration order), each with a time bound."""
        self._add(self._drain_hooks, name, hook)

    @staticmethod
    def _add(hooks: list[_Named], name: str, hook: Hook) -> None:
        if not any(h.name == name for h in hooks):  # ready() may run twice (tests, commands)
            hooks.append(_Named(name, hook))

    # --- start and stop ------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start the hooks and loops on the running event loop, once. A start hook that fails
        raises here (the caller answers 1011 or 503) and the next call tries again."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self._forget()
            self.loop = loop
            self._start_lock = asyncio.Lock()
        if self.started:
            return
        assert self._start_lock is not None
        async with self._start_lock:
            if self.started:
                return
            for named in self._start_hooks:
                await named.hook()
            # A fresh context: the loops must not inherit the ids of the request that started them.
            self.tasks = [
                loop.create_task(named.hook(), name=named.name, context=contextvars.Context()) for named in self._loops
            ]
            self._install_sigterm()
            from core import db, pg  # import Django's ORM: not at module level

            db.start_executor()
            pg.open_on(loop)
            self.started = True
            logger.info("runtime started", extra={"loops": [n.name for n in self._loops]})

    def _forget(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        self._stop_db_executor()
        self.started = False
        self.draining = False
        self._drained = None

    async def stop(self) -> None:
        """Cancel the loops (lifespan shutdown, after the server stopped serving)."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        from core import db, pg

        db.stop_executor()
        await pg.close()
        self.started = False

    @staticmethod
    def _stop_db_executor() -> None:
        """Without awaiting (the loop they ran on may be gone)."""
        from core import db, pg

        db.stop_executor()
        pg.abandon()

    # --- drain -------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop taking sockets, then run the drain hooks; idempotent (SIGTERM twice, lifespan)."""
        self.draining = True
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_task(self._run_drain_hooks())
        await asyncio.shield(self._drained)

    async def _run_drain_hooks(self) -> None:
        from django.conf import settings

        notice = float(getattr(settings, "DRAIN_NOTICE_SECONDS", 0))
        logger.info("draining", extra={"notice_s": notice})
        # Health already answers 503 and handshakes are refused: give balancers that poll health
        # (or retry handshakes elsewhere) this long to stop sending here before sockets close.
        if notice:
            await asyncio.sleep(notice)
        for named in self._drain_hooks:
            try:
                await asyncio.wait_for(named.hook(), DRAIN_HOOK_TIMEOUT_SECONDS)
            except Exception as exc:  # noqa: BLE001
                logger.warning("drain step failed", extra={"step": named.name, "error": exc.__class__.__name__})

    def _install_sigterm(self) -> None:
        """Chain onto the server's SIGTERM handler: drain first, then let the server (daphne or
        uvicorn) run its own shutdown."""
        try:
            previous = signal.getsignal(signal.SIGTERM)
        except ValueError:
            return
        if getattr(previous, "_chat_runtime", False):
            return  # already chained (a second loop in the same process)
        loop = self.loop
        assert loop is not None

        def handler(signum: int, frame: Any) -> None:
            timer = threading.Timer(EXIT_DEADLINE_SECONDS, os._exit, args=(0,))
            timer.daemon = True
            timer.start()
            # Set here, in the signal handler: from this instant health and handshakes say so.
            self.draining = True

            async def run() -> None:
                try:
                    await asyncio.wait_for(self.drain(), DRAIN_TIMEOUT_SECONDS)
                except Exception as exc:  # noqa: BLE001
                    logger.warning("drain did not finish", extra={"error": exc.__class__.__name__})
                finally:
                    if callable(previous):
                        previous(signum, frame)
                    else:
                        raise SystemExit(0)

            loop.call_soon_threadsafe(lambda: loop.create_task(run(), context=contextvars.Context()))

        handler._chat_runtime = True  # type: ignore[attr-defined]
        try:  # noqa: SIM105
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (tests)
            pass


runtime = Runtime()


class LifespanApp:
    """The ASGI ``lifespan`` protocol: start the runtime before serving, stop it after."""

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await runtime.ensure_started()
                except Exception as exc:  # noqa: BLE001
                    # Redis or the database away at boot: serve anyway (health says so); the
                    # first request or socket tries again.
                    logger.warning(
                        "runtime start failed; retried on first use", extra={"error": exc.__class__.__name__}
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await runtime.drain()
                await runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


class RuntimeStarter:
    """Wraps an ASGI app so that its first call starts the runtime (servers without lifespan).
    The start runs beside the request, never in its way (a health check must answer within its
    bound even when Redis hangs); one that fails is retried on the next call."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._starting: asyncio.Task[None] | None = None

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if (not runtime.started or runtime.loop is not asyncio.get_running_loop()) and self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start(), context=contextvars.Context())
        await self.app(scope, receive, send)

    async def _start(self) -> None:
        try:
            await runtime.ensure_started()
        except Exception as exc:  # noqa: BLE001
            logger.warning("runtime start failed", extra={"error": exc.__class__.__name__})
        finally:
            self._starting = None
