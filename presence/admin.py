"""Operator pages in the Django admin: live connections read from the Redis registry (per
instance and per user, with a disconnect that closes the user's sockets on every instance) and
the instances with their heartbeats.

Registry data is not a model, so these are plain admin views: they are added in front of the
default site's URLs (staff only, through ``admin_view``) and listed on its index page.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from core.errors import ApplicationError

from . import roles, selectors, services
from .models import StatusOutbox, UserStatus

logger = logging.getLogger("presence.admin")

REFRESH_SECONDS = 5


def _registry_snapshot(request: HttpRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Connections and instances from the registry; on a Redis failure an empty page and a
    message, not a 500 (the operator came here because something is wrong)."""
    try:
        return selectors.cluster_connections(), selectors.instances()
    except Exception as exc:
        logger.warning("registry unreadable from the admin", extra={"error": exc.__class__.__name__})
        messages.error(request, f"The connection registry is unreachable ({exc.__class__.__name__}).")
        return {"total": 0, "by_instance": {}, "users_online": 0, "connections": []}, []


def _usernames(user_ids: set[int]) -> dict[int, str]:
    users = get_user_model().objects.filter(pk__in=user_ids)
    return {pk: name for pk, name in users.values_list("pk", "username")}


def _refresh(request: HttpRequest) -> int:
    raw = request.GET.get("refresh", "")
    return int(raw) if raw.isdigit() else REFRESH_SECONDS


def requires(permission: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Staff (through ``admin_view``) and the permission, else a 403 naming its code."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.has_perm(permission):
                return HttpResponseForbidden(
                    f"403 Forbidden: requires the permission {permission}", content_type="text/plain; charset=utf-8"
                )
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


@requires(roles.VIEW_CONNECTIONS)
def connections_view(request: HttpRequest) -> HttpResponse:
    cluster, instances = _registry_snapshot(request)
    alive = {i["instance_id"]: i["alive"] for i in instances}
    names = _usernames({c["user_id"] for c in cluster["connections"]})

    user_filter, instance_filter = request.GET.get("user", ""), request.GET.get("instance", "")
    shown = [
        {**c, "username": names.get(c["user_id"], "?"), "instance_alive": alive.get(c["instance_id"], False)}
        for c in cluster["connections"]
        if (not user_filter or str(c["user_id"]) == user_filter)
        and (not instance_filter or c["instance_id"] == instance_filter)
    ]
    shown.sort(key=lambda c: (c["username"], c["connected_at"] or ""))

    per_user: dict[int, dict[str, Any]] = {}
    per_instance: dict[str, int] = defaultdict(int)
    for conn in shown:
        row = per_user.setdefault(
            conn["user_id"],
            {"user_id": conn["user_id"], "username": conn["username"], "connections": 0, "instances": set()},
        )
        row["connections"] += 1
        row["instances"].add(conn["instance_id"])
        per_instance[conn["instance_id"]] += 1
    if not (user_filter or instance_filter):
        for instance_id in alive:
            per_instance.setdefault(instance_id, 0)
    users = sorted(per_user.values(), key=lambda r: r["username"])
    for row in users:
        row["instances"] = sorted(row["instances"])

    context = {
        **admin.site.each_context(request),
        "title": "Live connections",
        "refresh": _refresh(request),
        "total": cluster["total"],
        "users_online": cluster["users_online"],
        "instance_count": len(instances),
        "filtered": bool(user_filter or instance_filter),
        "user_filter": names.get(int(user_filter), user_filter) if user_filter.isdigit() else user_filter,
        "instance_filter": instance_filter,
        "per_instance": [
            {"instance_id": i, "connections": n, "alive": alive.get(i, False)} for i, n in sorted(per_instance.items())
        ],
        "per_user": users,
        "connections": shown,
        "can_disconnect": request.user.has_perm(roles.DISCONNECT_USER),
    }
    return TemplateResponse(request, "admin/presence/connections.html", context)


@require_POST
@requires(roles.DISCONNECT_USER)
def disconnect_view(request: HttpRequest) -> HttpResponse:
    user_id = request.POST.get("user_id", "")
    try:
        closed = services.user_disconnect(user_id=user_id, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, f"Nobody disconnected: {exc.detail}")
    else:
        username = _usernames({int(user_id)}).get(int(user_id), user_id)
        logger.info("operator disconnected a user", extra={"target_user": int(user_id), "closed": closed})
        messages.success(request, f"Closing {closed} connection(s) of {username} on every instance (close code 4000).")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("admin:presence_connections")
    return HttpResponseRedirect(target)


@requires(roles.VIEW_INSTANCES)
def instances_view(request: HttpRequest) -> HttpResponse:
    _, instances = _registry_snapshot(request)
    context = {
        **admin.site.each_context(request),
        "title": "Chat instances",
        "refresh": _refresh(request),
        "instances": sorted(instances, key=lambda i: (not i["alive"], i["instance_id"])),
        "alive_count": sum(1 for i in instances if i["alive"]),
        "dead_count": sum(1 for i in instances if not i["alive"]),
        "ttl_seconds": settings.INSTANCE_TTL_SECONDS,
        "checked_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    return TemplateResponse(request, "admin/presence/instances.html", context)


# --- wiring into the default admin site -------------------------------------------------------

_site_get_urls = admin.site.get_urls
_site_get_app_list = admin.site.get_app_list


def _get_urls() -> list[URLPattern | URLResolver]:
    view = admin.site.admin_view  # staff only; others go to the admin login
    return [
        path("presence/connections/", view(connections_view), name="presence_connections"),
        path("presence/connections/disconnect/", view(disconnect_view), name="presence_disconnect"),
        path("presence/instances/", view(instances_view), name="presence_instances"),
        *_site_get_urls(),
    ]


def _get_app_list(request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
    app_list = _site_get_app_list(request, app_label)
    if app_label not in (None, "presence") or not request.user.is_staff:
        return app_list
    pages = [
        page
        for page, permission in zip(_pages(), (roles.VIEW_CONNECTIONS, roles.VIEW_INSTANCES), strict=True)
        if request.user.has_perm(permission)
    ]
    if not pages:
        return app_list
    for app in app_list:
        if app["app_label"] == "presence":
            app["models"] = pages + app["models"]
            return app_list
    app_list.append(
        {
            "name": "Chat operations",
            "app_label": "presence",
            "app_url": pages[0]["admin_url"],
            "has_module_perms": True,
            "models": pages,
        }
    )
    return app_list


def _pages() -> list[dict[str, Any]]:
    return [
        {
            "name": "Live connections",
            "object_name": "LiveConnections",
            "admin_url": reverse("admin:presence_connections"),
            "add_url": None,
            "view_only": True,
            "perms": {"view": True},
        },
        {
            "name": "Instances",
            "object_name": "Instances",
            "admin_url": reverse("admin:presence_instances"),
            "add_url": None,
            "view_only": True,
            "perms": {"view": True},
        },
    ]


admin.site.get_urls = _get_urls  # type: ignore[method-assign]
admin.site.get_app_list = _get_app_list  # type: ignore[method-assign]


@admin.register(UserStatus)
class UserStatusAdmin(admin.ModelAdmin):
    list_display = ["user", "status", "text", "online", "version", "last_seen", "updated_at"]
    list_filter = ["status", "online"]
    search_fields = ["user__username", "text"]
    raw_id_fields = ["user"]
    readonly_fields = ["online", "version", "last_seen", "updated_at"]

    def save_model(self, request: HttpRequest, obj: UserStatus, form: Any, change: bool) -> None:
        # Through the service, so the change gets a new version, reaches contacts and Firestore.
        if change:
            services.status_set(user_id=obj.user_id, status=obj.status, text=obj.text)
        else:
            super().save_model(request, obj, form, change)


@admin.register(StatusOutbox)
class StatusOutboxAdmin(admin.ModelAdmin):
    """Status writes still waiting for Firestore (empty when the sync is healthy)."""

    list_display = ["user", "version", "attempts", "enqueued_at", "next_attempt_at", "last_error"]
    readonly_fields = ["user", "version", "payload", "enqueued_at", "attempts", "next_attempt_at", "last_error"]
