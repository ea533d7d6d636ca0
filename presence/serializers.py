from __future__ import annotations

from rest_framework import serializers


class StatusIn(serializers.Serializer):
    status = serializers.CharField()
    text = serializers.CharField(required=False, allow_blank=True, allow_null=True, trim_whitespace=False)


class PresenceOut(serializers.Serializer):
    user_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["online", "away", "busy", "invisible", "offline"])
    text = serializers.CharField()
    online = serializers.BooleanField()
    last_seen = serializers.CharField(allow_null=True)
    version = serializers.IntegerField()
