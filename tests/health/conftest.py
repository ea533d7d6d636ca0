"""Plain HTTP for health and metrics tests against real instances: never follows a redirect and
measures how long the answer took."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any

from harness.processes import AppServer


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.text)


def get(server: AppServer, path: str, *, headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:
    """One GET, no redirect following, timed from connect to the last byte."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", errors="replace")
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text, time.monotonic() - started)
    finally:
        conn.close()
