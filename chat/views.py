"""HTTP interface: parse, call one service or selector, render. No business rules here."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import Invalid

from . import presenters, selectors, services
from .authentication import token_for_login
from .serializers import (
    ConversationIn,
    ConversationOut,
    ConversationPageOut,
    LoginIn,
    MessageIn,
    MessageOut,
    MessagePageOut,
    ParticipantIn,
    ReadIn,
    ReadOut,
    ReceiptsOut,
    TicketOut,
    TokenOut,
    TypingIn,
    TypingOut,
    UserOut,
)


def parse(serializer_class: type, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Invalid("Expected a JSON object.", errors={"non_field_errors": ["Expected a JSON object."]})
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def uid(request: Request) -> int:
    """The authenticated caller's id (every view here requires authentication)."""
    return int(request.user.pk)  # type: ignore[arg-type]


def user_dict(user: Any) -> dict[str, Any]:
    return {"id": user.pk, "username": user.get_username(), "is_staff": bool(user.is_staff)}


class TokenLoginView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(request=LoginIn, responses={200: TokenOut}, summary="Exchange credentials for a token")
    # Throttled per account and per address in the authentication backend (429 rate_limited).
    def post(self, request: Request) -> Response:
        data = parse(LoginIn, request.data)
        user = authenticate(request._request, username=data["username"], password=data["password"])
        if user is None or not user.is_active:
            message = "Unable to log in with the provided credentials."
            raise Invalid(message, errors={"non_field_errors": [message]})
        token = token_for_login(user=user)
        return Response({"token": token.key, "user": user_dict(user)})


class WsTicketView(APIView):
    @extend_schema(request=None, responses={201: TicketOut}, summary="A single-use ticket for the WebSocket")
    def post(self, request: Request) -> Response:
        ticket = services.ws_ticket_issue(user_id=uid(request))
        return Response(
            {"ticket": ticket, "expires_in": settings.WS_TICKET_TTL_SECONDS}, status=status.HTTP_201_CREATED
        )


class MeView(APIView):
    @extend_schema(responses={200: UserOut}, summary="The authenticated user")
    def get(self, request: Request) -> Response:
        return Response(user_dict(request.user))


class ConversationListView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("page", int, description="Page number, from 1")],
        responses={200: ConversationPageOut},
        operation_id="conversations_list",
        summary="The caller's conversations, paginated",
    )
    def get(self, request: Request) -> Response:
        from rest_framework.pagination import PageNumberPagination

        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.conversations_of(user_id=uid(request)), request, view=self)
        return paginator.get_paginated_response(
            [dict(presenters.conversation(c), unread=getattr(c, "unread", 0)) for c in page or []]
        )

    @extend_schema(request=ConversationIn, responses={201: ConversationOut}, summary="Create a conversation")
    def post(self, request: Request) -> Response:
        data = parse(ConversationIn, request.data)
        conversation = services.conversation_create(
            creator_id=uid(request), title=data.get("title", ""), participant_ids=data["participant_ids"]
        )
        return Response(presenters.conversation(conversation), status=status.HTTP_201_CREATED)


class ConversationDetailView(APIView):
    @extend_schema(responses={200: ConversationOut}, summary="One conversation (participants only)")
    def get(self, request: Request, conversation_id: str) -> Response:
        conversation = selectors.conversation_detail(user_id=uid(request), conversation_id=conversation_id)
        return Response(presenters.conversation(conversation))


class ParticipantListView(APIView):
    @extend_schema(
        request=ParticipantIn,
        responses={201: ConversationOut, 200: ConversationOut},
        summary="Add a participant (owner); 200 when already one",
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        data = parse(ParticipantIn, request.data)
        _, created = services.participant_add(
            actor_id=uid(request), conversation_id=conversation_id, user_id=data["user_id"]
        )
        conversation = selectors.conversation_detail(user_id=uid(request), conversation_id=conversation_id)
        return Response(
            presenters.conversation(conversation), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class ParticipantDetailView(APIView):
    @extend_schema(responses={204: None}, summary="Remove a participant (owner) or leave (self)")
    def delete(self, request: Request, conversation_id: str, user_id: str) -> Response:
        services.participant_remove(actor_id=uid(request), conversation_id=conversation_id, user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessageListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after_seq", int, description="Page forward: messages with a greater seq"),
            OpenApiParameter("before_seq", int, description="Page backward: messages with a smaller seq"),
            OpenApiParameter("limit", int, description="1 to 200, default 50"),
        ],
        responses={200: MessagePageOut},
        summary="Messages in seq order",
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        rows, has_more = selectors.messages_page(
            user_id=uid(request),
            conversation_id=conversation_id,
            after_seq=request.query_params.get("after_seq"),
            before_seq=request.query_params.get("before_seq"),
            limit=request.query_params.get("limit"),
        )
        return Response({"results": [presenters.message(m) for m in rows], "has_more": has_more})

    @extend_schema(request=MessageIn, responses={201: MessageOut, 200: MessageOut}, summary="Send a message")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = parse(MessageIn, request.data)
        result = services.message_send(
            sender_id=uid(request),
            conversation_id=conversation_id,
            body=data["body"],
            client_msg_id=data.get("client_msg_id"),
        )
        return Response(
            presenters.message(result.message), status=status.HTTP_200_OK if result.repeat else status.HTTP_201_CREATED
        )


class ReadView(APIView):
    @extend_schema(responses={200: ReceiptsOut}, summary="Read receipts of every participant")
    def get(self, request: Request, conversation_id: str) -> Response:
        receipts = selectors.read_receipts(user_id=uid(request), conversation_id=conversation_id)
        return Response({"receipts": receipts})

    @extend_schema(request=ReadIn, responses={200: ReadOut}, summary="Mark read up to a seq")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = parse(ReadIn, request.data)
        result = services.read_mark(user_id=uid(request), conversation_id=conversation_id, seq=data["seq"])
        return Response(
            presenters.read_receipt(
                conversation_id=conversation_id, user_id=uid(request), seq=result.seq, read_at=result.read_at
            )
        )


class TypingView(APIView):
    @extend_schema(request=TypingIn, responses={202: TypingOut}, summary="Typing start or stop")
    def post(self, request: Request, conversation_id: str) -> Response:
        data = parse(TypingIn, request.data)
        broadcast = services.typing_set(user_id=uid(request), conversation_id=conversation_id, state=data["state"])
        return Response({"broadcast": broadcast}, status=status.HTTP_202_ACCEPTED)
