"""Revocation through signals: a deactivated user's live sockets close at once with 4403, a
deleted user's or one whose password changed with 4401, on every instance. What fires no
signal (a bulk ``update()``) is caught by chat/revocation.py's periodic check."""

from __future__ import annotations

from typing import Any

from chat import events
from realtime.protocol import CloseCode


def close_sockets_of_deactivated_user(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        events.disconnect_user(user_id=instance.pk, code=CloseCode.DEACTIVATED)


def close_sockets_of_deleted_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    events.disconnect_user(user_id=instance.pk, code=CloseCode.NOT_AUTHENTICATED)


def note_password_change(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """pre_save: remember whether this save changes the stored password."""
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    if update_fields is not None and set(update_fields) == {"password"} and getattr(instance, "_password", 0) is None:
        # check_password()'s hash upgrade (new iterations, same password): Django does not
        # count it as a password change either. Sockets follow the session hash and are
        # re-checked by chat/revocation.py; tokens stay.
        return
    old = sender._default_manager.filter(pk=instance.pk).values_list("password", flat=True).first()
    if old is not None and old != instance.password:
        instance._chat_password_changed = True


def revoke_on_password_change(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    """post_save: a new password revokes the user's API tokens and closes their sockets (the
    session that changed it stays valid through ``update_session_auth_hash``; its socket
    reconnects)."""
    if not getattr(instance, "_chat_password_changed", False):
        return
    instance._chat_password_changed = False
    from chat.authentication import revoke_tokens

    revoke_tokens(user_id=instance.pk)
    events.disconnect_user(user_id=instance.pk, code=CloseCode.NOT_AUTHENTICATED)
