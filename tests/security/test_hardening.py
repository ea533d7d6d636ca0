"""Smaller hardening items against real servers: the socket cap per user, close codes as
bounded metric labels, the API docs from static files, and a clean ``check --deploy``."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedError

from tests.factories import UserFactory
from tests.integration.conftest import open_ws, token
from tests.security.live import ahttp, cluster_of, http

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path):
    c = cluster_of(tmp_path, servers={"a": "uvicorn"}, WS_MAX_SOCKETS_PER_USER="3")
    yield c.servers["a"]
    c.stop()


async def test_sockets_per_user_are_capped(server, transactional_db):
    from channels.db import database_sync_to_async

    user, other = await database_sync_to_async(lambda: [UserFactory(), UserFactory()])()
    headers = {"Authorization": f"Token {await database_sync_to_async(token)(user)}"}
    held = [await open_ws(server.ws_url, headers=headers) for _ in range(3)]
    over = await open_ws(server.ws_url, headers=headers, hello=False)
    assert await over.closed_code(5) == 4429
    other_ws = await open_ws(
        server.ws_url, headers={"Authorization": f"Token {await database_sync_to_async(token)(other)}"}
    )
    await held.pop().close()
    # A freed slot can be used again: the registry forgets the closed socket once the server has
    # handled the disconnect, moments after the client's close handshake returns.
    again, refusals = None, []
    for _ in range(30):
        try:
            again = await open_ws(server.ws_url, headers=headers)
            break
        except ConnectionClosedError as exc:
            refusals.append(exc.rcvd.code if exc.rcvd else None)
            await asyncio.sleep(0.1)
    assert set(refusals) <= {4429}, refusals
    assert again is not None, "the freed slot was never given back"
    for ws in [*held, again, other_ws]:
        await ws.close()


async def test_client_close_codes_are_bucketed_in_metrics(server, transactional_db):
    from channels.db import database_sync_to_async

    user = await database_sync_to_async(UserFactory)()
    headers = {"Authorization": f"Token {await database_sync_to_async(token)(user)}"}
    for code in (4321, 3999, 4777):
        ws = await open_ws(server.ws_url, headers=headers)
        await ws.conn.close(code=code)
    text = ""
    for _ in range(50):
        text = (await ahttp("GET", server, "/metrics")).text
        if 'chat_disconnects_total{code="3xxx"}' in text and 'code="4xxx"' in text:
            break
        import asyncio

        await asyncio.sleep(0.1)
    assert 'chat_disconnects_total{code="4xxx"} 2.0' in text
    assert 'chat_disconnects_total{code="3xxx"} 1.0' in text
    assert not re.search(r'code="(4321|3999|4777)"', text)


def test_api_docs_load_from_our_static_files(server):
    page = http("GET", server, "/api/docs/")
    assert page.status_code == 200
    assert not re.search(r"cdn\.jsdelivr|unpkg\.com|cdnjs", page.text)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert any("swagger-ui" in a for a in assets), page.text[:500]
    for asset in assets:
        assert http("GET", server, asset).status_code == 200, asset


def test_check_deploy_is_clean_in_production():
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        "DJANGO_SETTINGS_MODULE": "chatproject.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
    }
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "security.W" not in out.stdout + out.stderr
