"""One log line at start-up that says which mode this instance runs in."""

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
