"""System checks for the relations between settings (``manage.py check``, ``check --deploy``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def settings_relations(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    problems: list[Any] = []
    if settings.INSTANCE_HEARTBEAT_SECONDS * 2 > settings.INSTANCE_TTL_SECONDS:
        problems.append(
            Error(
                "INSTANCE_TTL_SECONDS must be at least twice the heartbeat renewal interval.",
                hint="Lower INSTANCE_HEARTBEAT_SECONDS or raise INSTANCE_TTL_SECONDS.",
                id="chat.E001",
            )
        )
    if settings.PRESENCE_GRACE_SECONDS < settings.INSTANCE_HEARTBEAT_SECONDS:
        problems.append(
            Warning(
                "PRESENCE_GRACE_SECONDS is shorter than the heartbeat interval; presence may flap.",
                id="chat.W001",
            )
        )
    if settings.CREDENTIAL_SWEEP_SECONDS < settings.CREDENTIAL_CHECK_SECONDS:
        problems.append(
            Warning(
                "CREDENTIAL_SWEEP_SECONDS is shorter than CREDENTIAL_CHECK_SECONDS: every round looks up "
                "every live socket's credential.",
                hint="The sweep only has to find tokens and sessions that expire with time; 60 s is the default.",
                id="chat.W002",
            )
        )
    return problems


@register(deploy=True)
def production_secrets(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    problems: list[Any] = []
    if settings.SECRET_KEY.startswith("dev-only-"):
        problems.append(Error("DJANGO_SECRET_KEY is the development default.", id="chat.E002"))
    if settings.DEBUG:
        problems.append(Error("DJANGO_DEBUG is on.", id="chat.E003"))
    return problems
