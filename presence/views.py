"""Connection and operator endpoints. Interfaces only: rules live in services and selectors."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.views import parse, uid

from . import selectors, services
from .serializers import PresenceOut, StatusIn


class MyConnectionsView(APIView):
    @extend_schema(summary="The caller's live connections on every instance")
    def get(self, request: Request) -> Response:
        return Response({"results": selectors.user_connections(user_id=uid(request))})


class AdminConnectionsView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(summary="Every live connection in the cluster (staff)")
    def get(self, request: Request) -> Response:
        return Response(selectors.cluster_connections())


class AdminInstancesView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(summary="Instances with heartbeat and connection count (staff)")
    def get(self, request: Request) -> Response:
        return Response(selectors.instances())


class AdminDisconnectUserView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, summary="Close a user's sockets on every instance with 4000 (staff)")
    def post(self, request: Request, user_id: str) -> Response:
        closed = services.user_disconnect(user_id=user_id)
        return Response({"closed": closed}, status=status.HTTP_202_ACCEPTED)


class PresenceListView(APIView):
    @extend_schema(responses={200: PresenceOut(many=True)}, summary="Presence of everyone sharing a conversation")
    def get(self, request: Request) -> Response:
        return Response({"results": selectors.presence_snapshot(user_id=uid(request))})


class UserStatusView(APIView):
    @extend_schema(responses={200: PresenceOut}, summary="A user's presence (self, co-participants, staff)")
    def get(self, request: Request, user_id: str) -> Response:
        return Response(
            selectors.presence_of(viewer_id=uid(request), user_id=user_id, viewer_is_staff=request.user.is_staff)
        )


class MyStatusView(APIView):
    @extend_schema(request=StatusIn, responses={200: PresenceOut}, summary="Set my status")
    def put(self, request: Request) -> Response:
        data = parse(StatusIn, request.data)
        return Response(services.status_set(user_id=uid(request), status=data["status"], text=data.get("text")))
