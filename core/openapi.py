"""The OpenAPI schema documents the error envelope and every error status an operation can
answer (drf-spectacular postprocessing hook), so clients and schema tests know them."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "code", "detail"],
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "retry_after": {"type": "number"},
        "permission": {"type": "string", "description": "the missing permission (403 permission_denied)"},
    },
}

ERROR_STATUSES = {
    "400": "Invalid input (`invalid`, `bad_request`), with `errors` per field",
    "401": "Not authenticated, or the token expired (`not_authenticated`)",
    "403": "Not allowed (`permission_denied`, `not_participant`, `account_inactive`)",
    "404": "No such object (`not_found`)",
    "405": "Method not allowed",
    "413": "Body too large (`too_large`)",
    "415": "Unsupported media type",
    "429": "Rate limited (`rate_limited`); see `Retry-After`",
    "503": "A dependency is unavailable (`unavailable`); see `retry_after`",
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for methods in result.get("paths", {}).values():
        for operation in methods.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, description in ERROR_STATUSES.items():
                operation["responses"].setdefault(status, {"description": description, "content": ref})
    return result
