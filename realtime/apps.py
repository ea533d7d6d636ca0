from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"

    def ready(self) -> None:
        from core.runtime import runtime

        from . import registry
        from .protocol import CloseCode
        from .router import router
        from .watchdog import watchdog

        async def close_sessions() -> None:
            router.close_all(CloseCode.SHUTDOWN)

        runtime.on_start("realtime.router", router.start)
        runtime.register_loop("realtime.receive", router.receive_loop)
        runtime.register_loop("realtime.watchdog", watchdog.run)
        runtime.register_loop("realtime.registry-heartbeat", registry.heartbeat_loop)
        runtime.on_drain("realtime.close-sessions", close_sessions)
        runtime.on_drain("realtime.database-calls", _drain_database_calls)
        runtime.on_drain("realtime.registry", registry.deregister)


async def _drain_database_calls() -> None:
    import logging

    from core.db import drain

    left = await drain(2.5)
    if left:
        logging.getLogger("realtime").warning("database calls still running at shutdown", extra={"count": left})
