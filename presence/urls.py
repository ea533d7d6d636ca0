from django.urls import path

from . import views

urlpatterns = [
    path("presence/", views.PresenceListView.as_view(), name="presence"),
    path("users/<str:user_id>/status/", views.UserStatusView.as_view(), name="user-status"),
    path("me/status/", views.MyStatusView.as_view(), name="my-status"),
    path("me/connections/", views.MyConnectionsView.as_view(), name="my-connections"),
    path("admin/connections/", views.AdminConnectionsView.as_view(), name="admin-connections"),
    path("admin/instances/", views.AdminInstancesView.as_view(), name="admin-instances"),
    path("admin/users/<str:user_id>/disconnect/", views.AdminDisconnectUserView.as_view(), name="admin-disconnect"),
]
