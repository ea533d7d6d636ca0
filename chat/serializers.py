"""Request shapes (types and presence) and response shapes for the OpenAPI schema.

Limits and rules (body length, who may do what) live in chat/services.py, shared with the
WebSocket path; these serializers only check that the right fields of the right type came in.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from .models import CLIENT_MSG_ID_MAX_CHARS, TITLE_MAX_CHARS


class StrictCharField(serializers.CharField):
    """A CharField that takes only JSON strings. DRF's own coerces numbers (``123`` -> ``"123"``),
    which would let the HTTP path store what the same service refuses on the WebSocket path."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictIntegerField(serializers.IntegerField):
    """An IntegerField that takes only JSON numbers (not ``"3"``, not ``true``), as the
    WebSocket path does through the same services."""

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, int) or isinstance(data, bool):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class LoginIn(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, trim_whitespace=False)


class UserOut(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    is_staff = serializers.BooleanField()


class TokenOut(serializers.Serializer):
    token = serializers.CharField()
    user = UserOut()


class TicketOut(serializers.Serializer):
    ticket = serializers.CharField()
    expires_in = serializers.IntegerField()


class ConversationIn(serializers.Serializer):
    title = StrictCharField(max_length=TITLE_MAX_CHARS, required=False, allow_blank=True, default="")
    participant_ids = serializers.ListField(child=StrictIntegerField(), allow_empty=True)


class ParticipantOut(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    role = serializers.CharField()
    joined_at = serializers.CharField()


class ConversationOut(serializers.Serializer):
    id = serializers.CharField()
    title = serializers.CharField()
    owner_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.CharField()
    last_seq = serializers.IntegerField()
    last_message_at = serializers.CharField(allow_null=True)
    participants = ParticipantOut(many=True)
    unread = serializers.IntegerField(required=False, help_text="In the caller's list: others' messages not read yet")


class ParticipantIn(serializers.Serializer):
    user_id = StrictIntegerField()


class MessageIn(serializers.Serializer):
    body = StrictCharField(trim_whitespace=False)
    client_msg_id = StrictCharField(max_length=CLIENT_MSG_ID_MAX_CHARS, required=False, allow_null=True)


class MessageOut(serializers.Serializer):
    id = serializers.CharField()
    conversation_id = serializers.CharField()
    seq = serializers.IntegerField()
    sender_id = serializers.IntegerField(allow_null=True)
    body = serializers.CharField()
    client_msg_id = serializers.CharField(allow_null=True)
    created_at = serializers.CharField()


class MessagePageOut(serializers.Serializer):
    results = MessageOut(many=True)
    has_more = serializers.BooleanField()


class ReadIn(serializers.Serializer):
    seq = StrictIntegerField(min_value=0)


class ReadOut(serializers.Serializer):
    conversation_id = serializers.CharField()
    user_id = serializers.IntegerField()
    seq = serializers.IntegerField()
    read_at = serializers.CharField(allow_null=True)


class ReceiptOut(serializers.Serializer):
    user_id = serializers.IntegerField()
    seq = serializers.IntegerField()
    read_at = serializers.CharField(allow_null=True)


class ReceiptsOut(serializers.Serializer):
    receipts = ReceiptOut(many=True)


class TypingIn(serializers.Serializer):
    state = serializers.ChoiceField(choices=["start", "stop"])


class ConversationPageOut(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = ConversationOut(many=True)


class TypingOut(serializers.Serializer):
    broadcast = serializers.BooleanField()
