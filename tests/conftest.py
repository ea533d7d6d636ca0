from __future__ import annotations

from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import ratelimit, services
from chatproject import redis_client
from presence import registry
from tests.factories import ConversationFactory, UserFactory
from tests.plugin import session_redis


@pytest.fixture(autouse=True)
def _fresh_state() -> Any:
    """Each test starts with an empty Redis and no process-local leftovers."""
    session_redis()
    redis_client.get_sync().flushall()
    redis_client.reset_clients()
    ratelimit.reset_local()
    services._local_tickets.clear()
    registry.reset_registry()
    yield


@pytest.fixture
def redis_server():
    return session_redis()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def staff_user(db):
    return UserFactory(is_staff=True)


def client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def conversation(user, other_user):
    return ConversationFactory(owner=user, members=[other_user])


def assert_error(response, status: int, code: str) -> dict:
    body = response.json()
    assert response.status_code == status, body
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    if status == 400:
        assert isinstance(body["errors"], dict)
    return body
