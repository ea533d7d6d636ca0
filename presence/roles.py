"""Operator roles: Django permissions, grouped into the "support" and "operator" groups.

| permission | support | operator | grants |
|---|---|---|---|
| presence.view_connections | yes | yes | GET /api/admin/connections/, the admin's Live connections |
| presence.view_instances | yes | yes | GET /api/admin/instances/, the admin's Instances |
| presence.view_userstatus | yes | yes | any user's status (GET /api/users/{id}/status/), the status list |
| presence.disconnect_user | no | yes | POST /api/admin/users/{id}/disconnect/, the admin's disconnect |
| presence.change_userstatus | no | yes | changing a user's status in the admin |

Superusers hold every permission. The operator API, the admin pages and the services behind
the management commands check the same codes through :func:`require`.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps

from core.errors import PermissionDenied

VIEW_CONNECTIONS = "presence.view_connections"
VIEW_INSTANCES = "presence.view_instances"
VIEW_STATUS = "presence.view_userstatus"
DISCONNECT_USER = "presence.disconnect_user"
MANAGE_STATUS = "presence.change_userstatus"

ROLES: dict[str, list[str]] = {
    "support": [VIEW_CONNECTIONS, VIEW_INSTANCES, VIEW_STATUS],
    "operator": [VIEW_CONNECTIONS, VIEW_INSTANCES, VIEW_STATUS, DISCONNECT_USER, MANAGE_STATUS],
}


class MissingPermission(PermissionDenied):
    """403 ``permission_denied`` naming the permission the caller lacks."""

    def __init__(self, permission: str) -> None:
        super().__init__(f"Requires the permission {permission!r}.")
        self.permission = permission

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "permission": self.permission}


def require(user: Any, permission: str) -> None:
    """Raise :class:`MissingPermission` unless ``user`` (active) holds ``permission``."""
    if user is None or not getattr(user, "is_active", False) or not user.has_perm(permission):
        raise MissingPermission(permission)


def ensure_roles(apps: Any = global_apps) -> None:
    """Create the groups with their permissions (idempotent; the data migration calls it)."""
    from django.contrib.auth.management import create_permissions

    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for app_label in ("presence",):
        config = apps.get_app_config(app_label)
        config.models_module = getattr(config, "models_module", None) or True
        create_permissions(config, apps=apps, verbosity=0)
    for name, codes in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=name)
        wanted = []
        for code in codes:
            app_label, codename = code.split(".")
            wanted.append(permission_model.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(wanted)
