"""Application errors and the one place that renders them.

Services raise an :class:`ApplicationError` subclass carrying a stable ``code`` and an HTTP
status. The DRF exception handler below and the WebSocket consumer render the same envelope:
``{"status", "code", "detail"}`` plus ``"errors"`` on a 400.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError as DbInterfaceError
from django.db import OperationalError as DbOperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from redis import exceptions as redis_exceptions
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger("chat.errors")

# What a client is told to wait before retrying after a dependency fault: about what a Sentinel
# failover or a database restart takes.
DEPENDENCY_RETRY_AFTER_SECONDS = 2.0


class ApplicationError(Exception):
    status: int = 400
    code: str = "bad_request"
    default_detail: str = "Bad request."

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        errors: dict[str, list[str]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        if code:
            self.code = code
        self.errors = errors
        self.retry_after = retry_after
        super().__init__(self.detail)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "code": self.code, "detail": self.detail}
        if self.status == 400:
            body["errors"] = self.errors or {}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class Invalid(ApplicationError):
    status, code, default_detail = 400, "invalid", "Invalid input."

    @classmethod
    def field(cls, name: str, message: str) -> Invalid:
        return cls(message, errors={name: [message]})


class NotAuthenticated(ApplicationError):
    status, code, default_detail = 401, "not_authenticated", "Authentication credentials were not provided."


class PermissionDenied(ApplicationError):
    status, code, default_detail = 403, "permission_denied", "You do not have permission to do this."


class AccountInactive(PermissionDenied):
    """The acting user's account was deactivated (a socket that meets it is closed with 4403)."""

    code, default_detail = "account_inactive", "This account is deactivated."


class NotParticipant(ApplicationError):
    status, code, default_detail = 403, "not_participant", "You are not a participant of this conversation."


class NotFound(ApplicationError):
    status, code, default_detail = 404, "not_found", "Not found."


class TooLarge(ApplicationError):
    status, code, default_detail = 413, "too_large", "Too large."


class RateLimited(ApplicationError):
    status, code, default_detail = 429, "rate_limited", "Too many requests; slow down."


class Unavailable(ApplicationError):
    status, code, default_detail = 503, "unavailable", "Service temporarily unavailable."

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None, **kwargs: Any) -> None:
        # Every 503 tells the client when to come back (the contract).
        super().__init__(detail, retry_after=retry_after or DEPENDENCY_RETRY_AFTER_SECONDS, **kwargs)


# Faults of Redis: down, hung, loading, demoted (READONLY) or mid-failover (Sentinel without a
# master, a cluster without a slot). ConnectionError covers BusyLoadingError and Sentinel's
# MasterNotFoundError.
REDIS_FAULTS: tuple[type[Exception], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.ClusterDownError,
    redis_exceptions.ClusterError,
    redis_exceptions.RedisClusterException,
    redis_exceptions.TryAgainError,
)
# Faults of the database server (down, restarting, connection lost). Integrity and programming
# errors are bugs, not faults, and stay 500s.
DATABASE_FAULTS: tuple[type[Exception], ...] = (DbOperationalError, DbInterfaceError)


def dependency_fault(exc: BaseException) -> Unavailable | None:
    """The 503 to answer for ``exc`` when it is a Redis or database fault (or a bounded wait on
    one that timed out), else None. Logged as one line without a traceback: in an outage every
    request hits it."""
    if isinstance(exc, Unavailable):
        return exc
    if isinstance(exc, REDIS_FAULTS):
        dependency = "redis"
    elif isinstance(exc, DATABASE_FAULTS):
        dependency = "database"
    elif isinstance(exc, (TimeoutError, ConnectionError)):
        dependency = "network"
    else:
        return None
    logger.warning("dependency unavailable", extra={"dependency": dependency, "error": exc.__class__.__name__})
    return Unavailable(f"The {dependency} is unavailable; retry shortly.")


class InternalError(ApplicationError):
    status, code, default_detail = 500, "internal_error", "Internal server error."


def internal_error_body() -> dict[str, Any]:
    return InternalError().as_dict()


def _flatten(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            if isinstance(value, (list, tuple)):
                out[str(key)] = [str(v) for v in value]
            elif isinstance(value, dict):
                for sub, msgs in _flatten(value).items():
                    out[f"{key}.{sub}"] = msgs
            else:
                out[str(key)] = [str(value)]
        return out
    if isinstance(detail, (list, tuple)):
        return {"non_field_errors": [str(v) for v in detail]}
    return {"non_field_errors": [str(detail)]}


_DRF_CODES: list[tuple[type[Exception], int, str]] = [
    (drf_exceptions.ValidationError, 400, "invalid"),
    (drf_exceptions.ParseError, 400, "bad_request"),
    (drf_exceptions.NotAuthenticated, 401, "not_authenticated"),
    (drf_exceptions.AuthenticationFailed, 401, "not_authenticated"),
    (drf_exceptions.PermissionDenied, 403, "permission_denied"),
    (drf_exceptions.NotFound, 404, "not_found"),
    (drf_exceptions.MethodNotAllowed, 405, "method_not_allowed"),
    (drf_exceptions.NotAcceptable, 406, "not_acceptable"),
    (drf_exceptions.UnsupportedMediaType, 415, "unsupported_media_type"),
    (drf_exceptions.Throttled, 429, "rate_limited"),
]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error leaves as the contract's envelope (and is counted)."""
    from core import metrics

    response = _render(exc, context)
    metrics.ERRORS.labels(code=response.data.get("code", "error")).inc()
    return response


def _render(exc: Exception, context: dict[str, Any]) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = TooLarge("The request body is larger than the server accepts.")
    elif (fault := dependency_fault(exc)) is not None:
        # In cluster mode tickets and send buckets live in Redis, everything else in the
        # database; without them this instance cannot do the call. That is a 503 the client
        # retries (elsewhere), not a 500.
        exc = fault

    if isinstance(exc, ApplicationError):
        body = exc.as_dict()
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        return Response(body, status=exc.status, headers=headers)

    if isinstance(exc, drf_exceptions.APIException):
        status, code = exc.status_code, "error"
        for klass, klass_status, klass_code in _DRF_CODES:
            if isinstance(exc, klass):
                status, code = klass_status, klass_code
                break
        if isinstance(exc, drf_exceptions.ValidationError):
            errors = _flatten(exc.detail)
            body = Invalid(errors=errors).as_dict()
        else:
            detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
            body = _error(status, code, str(detail))
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        wait = getattr(exc, "wait", None)
        if wait is not None:
            headers["Retry-After"] = str(int(wait))
        return Response(body, status=status, headers=headers)

    logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
    return Response(internal_error_body(), status=500)


def _error(status: int, code: str, detail: str) -> dict[str, Any]:
    error = ApplicationError(detail, code=code)
    error.status = status
    return error.as_dict()


def error_response(error: ApplicationError) -> JsonResponse:
    """The envelope as a plain Django response (outside DRF: handlers, health, metrics)."""
    return JsonResponse(error.as_dict(), status=error.status)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return error_response(NotFound())
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return error_response(InternalError())
    from django.views.defaults import server_error

    return server_error(request)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return error_response(PermissionDenied("Forbidden."))
    from django.views.defaults import permission_denied

    return permission_denied(request, exception or DjangoPermissionDenied())


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request) and isinstance(exception, RequestDataTooBig):
        # Raised outside a view (a middleware read the body): still the contract's 413.
        return JsonResponse(TooLarge("The request body is larger than the server accepts.").as_dict(), status=413)
    if _is_api(request):
        return error_response(ApplicationError())
    from django.views.defaults import bad_request

    return bad_request(request, exception or Exception())
