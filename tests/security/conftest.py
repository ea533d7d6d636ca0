"""Real server processes for the security suite: a chat instance (or two) under uvicorn on its
own redis-server and the test run's PostgreSQL database, real ``websockets`` clients, and HTTP.

A test module may set ``SERVER_ENV`` (extra environment of its instances, e.g. tight rate
budgets) and ``SERVERS`` (instance name -> server kind); the instances are started once per
module. Each test makes its own users, so budgets and presence never carry over between tests.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.factories import ConversationFactory, UserFactory
from tests.integration.conftest import Cluster, start_cluster, token


@pytest.fixture(scope="module")
def app(request, django_db_setup, tmp_path_factory) -> Any:
    """The module's instances (by default one, "a", under uvicorn)."""
    servers = getattr(request.module, "SERVERS", {"a": "uvicorn"})
    env = getattr(request.module, "SERVER_ENV", {})
    cluster: Cluster = start_cluster(tmp_path_factory.mktemp("security"), servers=servers, **env)
    yield cluster
    cluster.stop()


@pytest.fixture
def people(transactional_db):
    alice, bob, carol = (UserFactory() for _ in range(3))
    conv = ConversationFactory(owner=alice, members=[bob])
    for user in (alice, bob, carol):
        user.token = token(user)
    return {"alice": alice, "bob": bob, "carol": carol, "conv": conv, "cid": str(conv.id)}


def http(
    method: str, url: str, token: str | None = None, body: Any = None, *, raw: bytes | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], Any]:
    """One HTTP call: (status, headers with lower-case names, parsed JSON body or None). ``body`` is sent as JSON with
    escapes for anything outside ASCII (lone surrogates included), ``raw`` as it is."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            content = resp.read()
            return (
                resp.status,
                {k.lower(): v for k, v in resp.headers.items()},
                json.loads(content) if content else None,
            )
    except urllib.error.HTTPError as exc:
        content = exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(content) if content else None


async def ahttp(*args: Any, **kw: Any) -> tuple[int, dict[str, str], Any]:
    return await asyncio.to_thread(http, *args, **kw)


def assert_envelope(body: dict[str, Any], status: int, code: str) -> None:
    """The contract's error envelope, with the given status and code."""
    assert body["status"] == status, body
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    if status == 400:
        assert isinstance(body["errors"], dict)
    if status == 429:
        assert body["retry_after"] > 0
