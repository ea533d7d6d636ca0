"""API tokens with a lifetime (``TOKEN_TTL_SECONDS``), for HTTP and the socket alike."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed


def token_cutoff() -> dt.datetime | None:
    """Tokens created before this instant have expired (None: tokens never expire)."""
    ttl = settings.TOKEN_TTL_SECONDS
    return timezone.now() - dt.timedelta(seconds=ttl) if ttl else None


def token_expired(token: Token) -> bool:
    cutoff = token_cutoff()
    return cutoff is not None and token.created < cutoff


@transaction.atomic
def token_for_login(*, user: Any) -> Token:
    """The user's token after a successful login: the current one while it is valid, a new one
    (the old key revoked) once it has expired."""
    token = Token.objects.select_for_update().filter(user=user).first()
    if token is not None and not token_expired(token):
        return token
    if token is not None:
        token.delete()
    return Token.objects.create(user=user)


def revoke_tokens(*, user_id: int) -> int:
    """Delete the user's API tokens (a password change); returns how many there were."""
    deleted, _ = Token.objects.filter(user_id=user_id).delete()
    return int(deleted)


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, refusing tokens older than ``TOKEN_TTL_SECONDS`` (401)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        user, token = super().authenticate_credentials(key)
        if token_expired(token):
            raise AuthenticationFailed("Token has expired; sign in again.")
        return user, token
