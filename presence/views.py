"""Connection and operator endpoints. Interfaces only: rules live in services and selectors."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.views import parse, uid

from . import roles, selectors, services
from .serializers import (
    ClusterConnectionsOut,
    ConnectionListOut,
    DisconnectOut,
    InstanceOut,
    PresenceListOut,
    PresenceOut,
    StatusIn,
)


def requires(permission: str) -> type[BasePermission]:
    """A DRF permission class for one Django permission; a 403 names the missing code."""

    class Requires(BasePermission):
        def has_permission(self, request: Request, view: object) -> bool:
            roles.require(request.user, permission)
            return True

    Requires.__name__ = f"Requires_{permission.replace('.', '_')}"
    return Requires


class MyConnectionsView(APIView):
    @extend_schema(responses={200: ConnectionListOut}, summary="The caller's live connections on every instance")
    def get(self, request: Request) -> Response:
        return Response({"results": selectors.user_connections(user_id=uid(request))})


class AdminConnectionsView(APIView):
    permission_classes = [requires(roles.VIEW_CONNECTIONS)]

    @extend_schema(
        responses={200: ClusterConnectionsOut},
        summary="Every live connection in the cluster (presence.view_connections)",
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.cluster_connections())


class AdminInstancesView(APIView):
    permission_classes = [requires(roles.VIEW_INSTANCES)]

    @extend_schema(
        responses={200: InstanceOut(many=True)},
        summary="Instances with heartbeat and connection count (presence.view_instances)",
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.instances())


class AdminDisconnectUserView(APIView):
    permission_classes = [requires(roles.DISCONNECT_USER)]

    @extend_schema(
        request=None,
        responses={202: DisconnectOut},
        summary="Close a user's sockets everywhere with 4000 (presence.disconnect_user)",
    )
    def post(self, request: Request, user_id: str) -> Response:
        closed = services.user_disconnect(user_id=user_id, actor=request.user)
        return Response({"closed": closed}, status=status.HTTP_202_ACCEPTED)


class PresenceListView(APIView):
    @extend_schema(responses={200: PresenceListOut}, summary="Presence of everyone sharing a conversation")
    def get(self, request: Request) -> Response:
        return Response({"results": selectors.presence_snapshot(user_id=uid(request))})


class UserStatusView(APIView):
    @extend_schema(responses={200: PresenceOut}, summary="A user's presence (self, co-participants, staff)")
    def get(self, request: Request, user_id: str) -> Response:
        return Response(
            selectors.presence_of(
                viewer_id=uid(request), user_id=user_id, viewer_is_staff=request.user.has_perm(roles.VIEW_STATUS)
            )
        )


class MyStatusView(APIView):
    @extend_schema(request=StatusIn, responses={200: PresenceOut}, summary="Set my status")
    def put(self, request: Request) -> Response:
        data = parse(StatusIn, request.data)
        return Response(services.status_set(user_id=uid(request), status=data["status"], text=data.get("text")))
