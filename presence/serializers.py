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


class PresenceListOut(serializers.Serializer):
    results = PresenceOut(many=True)


class ConnectionOut(serializers.Serializer):
    connection_id = serializers.CharField()
    user_id = serializers.IntegerField()
    instance_id = serializers.CharField()
    connected_at = serializers.CharField(allow_null=True)
    last_seen = serializers.CharField(allow_null=True)
    remote_addr = serializers.CharField()
    user_agent = serializers.CharField()


class ConnectionListOut(serializers.Serializer):
    results = ConnectionOut(many=True)


class ClusterConnectionsOut(serializers.Serializer):
    total = serializers.IntegerField()
    by_instance = serializers.DictField(child=serializers.IntegerField())
    users_online = serializers.IntegerField()
    connections = ConnectionOut(many=True)


class InstanceOut(serializers.Serializer):
    instance_id = serializers.CharField()
    connections = serializers.IntegerField()
    last_heartbeat = serializers.CharField(allow_null=True)
    heartbeat_age_s = serializers.FloatField()
    alive = serializers.BooleanField()


class DisconnectOut(serializers.Serializer):
    closed = serializers.IntegerField()
