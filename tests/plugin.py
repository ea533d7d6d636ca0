"""Loaded with ``-p tests.plugin`` before Django's settings: starts this run's own redis-server
on a free port and points the settings at it and at a throw-away PostgreSQL database, through
the same environment variables production uses. Nothing here touches a developer's data."""

from __future__ import annotations

import os

import pytest

from harness.processes import RedisServer

_redis: RedisServer | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    global _redis
    _redis = RedisServer().start()
    os.environ["REDIS_HOST"] = "127.0.0.1"
    os.environ["REDIS_PORT"] = str(_redis.port)
    os.environ.setdefault("CHAT_MODE", "cluster")
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    os.environ.setdefault("INSTANCE_ID", f"test-{os.getpid()}")
    os.environ.setdefault("TEST_DATABASE_NAME", f"test_chat_{os.getpid()}")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        # Under pytest-xdist (-n) each worker inherits the names above from the controller:
        # its own database and instance id, as its own redis-server above.
        for name in ("INSTANCE_ID", "TEST_DATABASE_NAME"):
            os.environ[name] = f"{os.environ[name]}_{worker}"
    os.environ.setdefault("LOG_LEVEL", "WARNING")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _redis is not None:
        _redis.stop()


def session_redis() -> RedisServer:
    assert _redis is not None
    return _redis
