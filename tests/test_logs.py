"""Structured logs of real instances started with the contract's own commands (so daphne's and
uvicorn's access logs are on): connect and disconnect lines carry the ids, and no credential or
message body reaches the log output."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from harness.processes import AppServer, start_all, stop_all
from tests.factories import ConversationFactory, UserFactory
from tests.integration.conftest import open_ws, start_cluster

# One database mode for the whole module: pytest-django runs tests grouped by mode, which would
# otherwise split the module and start its servers twice.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-Lg7-correct-horse"
WRONG_PASSWORD = "pw-Lg7-wrong-guess"
BODY = "body-Lg7-private words"


class ContractServer(AppServer):
    """The start commands exactly as the contract gives them."""

    def command(self) -> list[str]:
        bindir = Path(sys.executable).parent
        if self.server == "daphne":
            return [str(bindir / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "chatproject.asgi:application"]
        return [
            str(bindir / "uvicorn"),
            "chatproject.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]


@pytest.fixture(scope="module")
def servers(django_db_setup, tmp_path_factory):
    work = tmp_path_factory.mktemp("logs")
    cluster = start_cluster(work, servers={}, LOG_LEVEL="INFO", LOG_FORMAT="json")
    started = [
        ContractServer("daphne", "log-d", cluster.env, work),
        ContractServer("uvicorn", "log-u", cluster.env, work),
    ]
    try:
        start_all(started)
        yield {s.server: s for s in started}
    finally:
        stop_all(started)
        cluster.redis.stop()


def post(server: AppServer, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"{server.url}{path}", data=json.dumps(body or {}).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def find(server: AppServer, pred, timeout: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for line in json_lines(server.logs()):
            if pred(line):
                return line
        assert time.monotonic() < deadline, f"no such log line in:\n{server.logs()[-3000:]}"
        time.sleep(0.1)


@pytest.fixture
def member(transactional_db):
    user = UserFactory()
    # Hashed with the servers' hasher (the test settings use a quick one they do not know).
    user.password = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt())
    user.save(update_fields=["password"])
    conv = ConversationFactory(owner=user)
    return user, conv


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_connect_and_disconnect_lines_carry_ids_and_no_credential_is_logged(servers, member, kind):
    server = servers[kind]
    user, conv = member
    status, _ = await asyncio.to_thread(
        post, server, "/api/auth/token/", {"username": user.username, "password": WRONG_PASSWORD}
    )
    assert status == 400
    status, login = await asyncio.to_thread(
        post, server, "/api/auth/token/", {"username": user.username, "password": PASSWORD}
    )
    assert status == 200
    token = login["token"]
    status, issued = await asyncio.to_thread(post, server, "/api/auth/ws-ticket/", None, token)
    assert status == 201
    ticket = issued["ticket"]

    ws = await open_ws(f"{server.ws_url}?ticket={ticket}")
    connection_id = ws.hello["connection_id"]
    ack = await ws.request({"type": "message.send", "id": "1", "conversation_id": str(conv.id), "body": BODY})
    assert ack["type"] == "ack"
    await ws.close()
    # A native client's token on the handshake, too.
    by_token = await open_ws(server.ws_url, headers={"Authorization": f"Token {token}"})
    await by_token.close()

    def about(msg: str, conn_id: str):
        return lambda line: line.get("msg") == msg and line.get("connection_id") == conn_id

    connected = await asyncio.to_thread(find, server, about("connected", connection_id))
    disconnected = await asyncio.to_thread(find, server, about("disconnected", connection_id))
    for line in (connected, disconnected):
        assert line["instance_id"] == server.instance_id
        assert line["user_id"] == user.pk
        assert line["level"] == "INFO" and line["ts"]
    assert disconnected["close_code"] == 1000
    assert isinstance(disconnected["duration_s"], int | float) and 0 <= disconnected["duration_s"] < 30
    await asyncio.to_thread(find, server, about("disconnected", by_token.hello["connection_id"]))

    if kind == "uvicorn":
        # uvicorn logs the handshake with its query string: in our format, the ticket masked.
        handshake = await asyncio.to_thread(
            find, server, lambda line: line.get("logger") == "uvicorn.error" and "WebSocket /ws/chat/?" in line["msg"]
        )
        assert "ticket=[redacted]" in handshake["msg"]

    output = server.logs()
    for secret in (token, ticket, PASSWORD, WRONG_PASSWORD, BODY, "private words"):
        assert secret not in output, f"{secret!r} appears in the {kind} log output"


def test_formatter_masks_credentials_in_messages_and_drops_secret_fields():
    from core.logging import JsonFormatter

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/ws/chat/?ticket=abcDEF123&x=1"),
        None,
    )
    record.header = "Authorization: Token 0123456789abcdef0123"
    record.token = "0123456789abcdef0123"
    record.password = "hunter2-hunter2"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == '127.0.0.1:5000 - "WebSocket /ws/chat/?ticket=[redacted]&x=1" [accepted]'
    assert line["header"] == "Authorization: Token [redacted]"
    assert "token" not in line and "password" not in line
    assert "0123456789abcdef0123" not in json.dumps(line) and "hunter2" not in json.dumps(line)
