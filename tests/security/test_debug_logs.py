"""DEBUG logs of both servers never carry a session cookie, a token or a frame's payload."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from tests.factories import ConversationFactory, UserFactory
from tests.integration.conftest import open_ws, token
from tests.security.live import cluster_of, session_cookie

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BODY = "payload-that-must-not-be-logged-7f3a"


@pytest.fixture
def debug_pair(tmp_path):
    c = cluster_of(tmp_path, LOG_LEVEL="DEBUG", PYTHONASYNCIODEBUG="0")
    yield c
    c.stop()


async def test_debug_logs_hold_no_cookie_token_or_payload(debug_pair, transactional_db, settings):
    user = await database_sync_to_async(UserFactory)()
    conv = await database_sync_to_async(ConversationFactory)(owner=user)
    cookie = await database_sync_to_async(session_cookie)(user, settings)
    key = await database_sync_to_async(token)(user)
    for server in debug_pair.servers.values():
        by_cookie = await open_ws(
            server.ws_url, headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}, origin=server.url
        )
        ack = await by_cookie.request(
            {"type": "message.send", "id": "1", "conversation_id": str(conv.id), "body": BODY}
        )
        assert ack["type"] == "ack"
        await by_cookie.close()
        by_token = await open_ws(server.ws_url, headers={"Authorization": f"Token {key}"})
        await by_token.request({"type": "typing", "id": "2", "conversation_id": str(conv.id), "state": BODY})
        await by_token.close()
    for name, server in debug_pair.servers.items():
        logs = server.logs()
        assert '"level": "DEBUG"' in logs, f"{name} logged nothing at DEBUG"
        for secret in (cookie, key, BODY):
            assert secret not in logs, f"{name} logged {secret[:6]}…"
