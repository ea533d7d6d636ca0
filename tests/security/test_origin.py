"""The WebSocket handshake's Host and Origin, checked like Django's CSRF origin check (scheme,
host and port exactly), on both real servers, with raw handshakes."""

from __future__ import annotations

import pytest

from tests.factories import UserFactory
from tests.integration.conftest import token
from tests.security.live import cluster_of, raw_handshake, session_cookie

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TRUSTED = "https://chat.example.com,https://*.example.org"


@pytest.fixture
def pair(tmp_path):
    c = cluster_of(tmp_path, CSRF_TRUSTED_ORIGINS=TRUSTED)
    yield c
    c.stop()


@pytest.fixture
def browser(transactional_db, settings):
    user = UserFactory()
    return {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_cookie(user, settings)}"}


@pytest.mark.parametrize("server", ["a", "b"])
def test_session_socket_needs_the_exact_origin(pair, browser, server):
    port = pair.servers[server].port
    host = f"127.0.0.1:{port}"

    def status(origin: str) -> int:
        return raw_handshake(port, {"Host": host, "Origin": origin, **browser})

    assert status(f"http://{host}") == 101
    for foreign in (
        "http://127.0.0.1:9999",  # another port of the same host
        "https://127.0.0.1",  # another scheme
        f"https://{host}",
        f"http://user@{host}",  # userinfo
        "http://127.0.0.1",
        "null",
    ):
        assert status(foreign) == 403, foreign
    # CSRF_TRUSTED_ORIGINS: exact entries and wildcard subdomains, scheme included.
    assert status("https://chat.example.com") == 101
    assert status("https://a.example.org") == 101
    for foreign in ("http://chat.example.com", "https://chat.example.com:8443", "http://a.example.org"):
        assert status(foreign) == 403, foreign


@pytest.mark.parametrize("server", ["a", "b"])
def test_handshake_honours_allowed_hosts(pair, transactional_db, server):
    port = pair.servers[server].port
    auth = {"Authorization": f"Token {token(UserFactory())}"}
    assert raw_handshake(port, {"Host": f"127.0.0.1:{port}", **auth}) == 101
    assert raw_handshake(port, {"Host": "evil.example", **auth}) == 403
    assert raw_handshake(port, {"Host": f"evil.example:{port}", **auth}) == 403
    # An Origin matching a disallowed Host is no way around it.
    assert raw_handshake(port, {"Host": "evil.example", "Origin": "http://evil.example", **auth}) == 403
