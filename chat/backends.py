"""The authentication backend: Django's ModelBackend behind the login throttle."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from . import login_throttle


def client_address(request: HttpRequest | None) -> str:
    """The peer address the server saw (behind a proxy: what its proxy-headers handling made
    of X-Forwarded-For, see README "Security")."""
    if request is None:
        return ""
    return str(request.META.get("REMOTE_ADDR") or "")


class ThrottledModelBackend(ModelBackend):
    """Every password check (token login, admin login) spends the account's and the address's
    login budget first; over it, 429 ``rate_limited`` before the password is even hashed."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if username is None:
            username = kwargs.get(self._username_field())
        if username is None or password is None:
            return None
        login_throttle.attempt(username=str(username), address=client_address(request))
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            login_throttle.succeeded(username=str(username))
        return user

    async def aauthenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        # ModelBackend's async variant does not go through authenticate(); this one does.
        return await sync_to_async(self.authenticate)(request, username=username, password=password, **kwargs)

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return str(get_user_model().USERNAME_FIELD)
