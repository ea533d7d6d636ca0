"""Helpers for the security tests that run against real server processes."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import requests
from django.test import Client as DjangoClient

from harness.processes import AppServer
from tests.integration.conftest import start_cluster

# The servers use the test settings' password hasher, so passwords set by factories verify.
SERVER_SETTINGS = {"DJANGO_SETTINGS_MODULE": "chatproject.settings.test"}


def cluster_of(tmp_path, servers: dict[str, str] | None = None, **env: str):
    return start_cluster(tmp_path, servers=servers or {"a": "daphne", "b": "uvicorn"}, **SERVER_SETTINGS, **env)


def http(
    method: str, server: AppServer, path: str, body: Any = None, token: str | None = None, **kw: Any
) -> requests.Response:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return requests.request(method, server.url + path, json=body, headers=headers, timeout=10, **kw)


async def ahttp(*args: Any, **kw: Any) -> requests.Response:
    return await asyncio.to_thread(http, *args, **kw)


def session_cookie(user, settings) -> str:
    """A real session in the shared database, as a browser would hold after signing in."""
    client = DjangoClient()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def raw_handshake(port: int, headers: dict[str, str], path: str = "/ws/chat/") -> int:
    """Send a WebSocket upgrade with exactly these headers (Host included); the HTTP status."""
    lines = [f"GET {path} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "",
        "",
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    return int(status_line.split()[1])


def frames(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
