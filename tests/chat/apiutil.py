"""Helpers shared by the HTTP API tests (tests/chat/test_api_*.py)."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient

from chat import services
from chat.models import Message

# A well-formed id that no conversation has (a fixed one: every test worker must collect the
# same parametrized ids).
UNKNOWN_ID = "8d0c2f4e-6b1a-4c3e-9f7d-000000000404"

MESSAGE_KEYS = {"id", "conversation_id", "seq", "sender_id", "body", "client_msg_id", "created_at"}


def conv_url(conversation: Any, suffix: str = "") -> str:
    cid = conversation if isinstance(conversation, str) else conversation.id
    return f"/api/conversations/{cid}/{suffix}"


def post_raw(client: APIClient, url: str, raw: str) -> Any:
    return client.post(url, data=raw, content_type="application/json")


def send(user: Any, conversation: Any, body: str, client_msg_id: str | None = None) -> Message:
    return services.message_send(
        sender_id=user.pk, conversation_id=conversation.id, body=body, client_msg_id=client_msg_id
    ).message


def frames(published: list[tuple[str, dict[str, Any]]], type_: str) -> list[tuple[str, dict[str, Any]]]:
    return [(g, m) for g, m in published if m["frame"] and m["frame"]["type"] == type_]
