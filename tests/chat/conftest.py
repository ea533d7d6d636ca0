"""Fixtures shared by the chat tests: what leaves through chat.events.publish, the third user
and the API clients of the other participants, and a conversation holding five messages."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from rest_framework.test import APIClient

from chat.models import Message
from tests.chat.apiutil import send
from tests.conftest import client_for
from tests.factories import UserFactory


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every event that leaves through chat.events.publish (from any thread), as (group, layer
    message)."""
    sent: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def record(groups: list[str], message: dict[str, Any]) -> None:
        with lock:
            sent.extend((g, {**message, "group": g}) for g in groups)

    monkeypatch.setattr("chat.events.publish", record)
    return sent


@pytest.fixture
def stranger(db: Any) -> Any:
    return UserFactory()


@pytest.fixture
def stranger_api(stranger: Any) -> APIClient:
    return client_for(stranger)


@pytest.fixture
def member_api(other_user: Any) -> APIClient:
    return client_for(other_user)


@pytest.fixture
def five(conversation: Any, user: Any, other_user: Any) -> list[Message]:
    """Five messages in ``conversation``, seq 1 to 5, sent in turn by the two participants."""
    return [send(user if i % 2 else other_user, conversation, f"m{i}") for i in range(1, 6)]
