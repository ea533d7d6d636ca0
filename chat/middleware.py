"""Application errors raised outside DRF views (the admin login's throttle, say) leave as the
contract's envelope with their status and ``Retry-After``, not as a 500."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from core.errors import ApplicationError


class ApplicationErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, ApplicationError):
            return None
        response: HttpResponse
        if request.path.startswith("/api/"):
            response = JsonResponse(exception.as_dict(), status=exception.status)
        else:
            response = HttpResponse(exception.detail, status=exception.status, content_type="text/plain; charset=utf-8")
        if exception.retry_after is not None:
            response["Retry-After"] = str(max(1, int(exception.retry_after + 0.999)))
        return response
