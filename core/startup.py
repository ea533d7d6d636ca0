"""At start-up: one log line that says which mode this instance runs in, and the garbage
collector's settings."""

import gc
import logging

from django.conf import settings

logger = logging.getLogger("chat.startup")


def log_startup() -> None:
    if settings.CHAT_MODE == "cluster":
        logger.info(
            "cluster mode: Redis channel layer and connection registry",
            extra={"mode": "cluster", "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]},
        )
    else:
        logger.warning(
            "single mode: no Redis configured or reachable; one instance, in-process channel layer",
            extra={"mode": "single", "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]},
        )


def tune_gc() -> None:
    """Each socket holds hundreds of objects that live as long as it does; with Python's default
    thresholds the collector rescans all of them again and again while thousands of sockets
    connect at once, and that time lands on whatever allocates (in the reconnect storm's
    profile: uvicorn's protocol objects, asyncio events, coroutine starts). Higher thresholds
    make full collections rarer; freezing moves what start-up made (Django, the apps, the
    modules) out of every scan."""
    if settings.GC_THRESHOLDS is not None:
        gc.set_threshold(*settings.GC_THRESHOLDS)
    if settings.GC_FREEZE_AT_START:
        gc.collect()
        gc.freeze()
    logger.info("garbage collector", extra={"thresholds": list(gc.get_threshold()), "frozen": gc.get_freeze_count()})
