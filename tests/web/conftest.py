"""Browser tests: headless Chromium (Debian's package) driven by Playwright for Python, against
two uvicorn instances behind nginx on one Redis and a fresh PostgreSQL database
(harness.stack). The stack and the browser are shared by the tests of a module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.stack import Stack

CHROMIUM = os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CHAT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "var" / "artifacts"))
RECONNECT_WINDOW_MS = 1000


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack(
        instances=2,
        nginx=True,
        env={"WS_RECONNECT_WINDOW_MS": str(RECONNECT_WINDOW_MS), "WS_HEARTBEAT_INTERVAL_SECONDS": "2"},
    ).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements/dev.txt)")
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
