from django.urls import path

from . import views

urlpatterns = [
    path("auth/token/", views.TokenLoginView.as_view(), name="auth-token"),
    path("auth/ws-ticket/", views.WsTicketView.as_view(), name="ws-ticket"),
    path("me/", views.MeView.as_view(), name="me"),
    path("conversations/", views.ConversationListView.as_view(), name="conversations"),
    path("conversations/<str:conversation_id>/", views.ConversationDetailView.as_view(), name="conversation"),
    path(
        "conversations/<str:conversation_id>/participants/",
        views.ParticipantListView.as_view(),
        name="participants",
    ),
    path(
        "conversations/<str:conversation_id>/participants/<str:user_id>/",
        views.ParticipantDetailView.as_view(),
        name="participant",
    ),
    path("conversations/<str:conversation_id>/messages/", views.MessageListView.as_view(), name="messages"),
    path("conversations/<str:conversation_id>/read/", views.ReadView.as_view(), name="read"),
    path("conversations/<str:conversation_id>/typing/", views.TypingView.as_view(), name="typing"),
]
