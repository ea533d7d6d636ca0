"""The WebSocket protocol's JSON Schema, published next to the OpenAPI schema."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from . import protocol


@require_GET
def ws_schema(request: HttpRequest) -> JsonResponse:
    return JsonResponse(protocol.document(), json_dumps_params={"indent": 2})
