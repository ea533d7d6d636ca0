"""Structured log lines: every record carries the instance id, and the connection and user ids
of the WebSocket or request it belongs to (context variables set by the consumer)."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from typing import Any

connection_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("connection_id", default=None)
user_id_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("user_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# Never written to a log line, whatever a caller passes in `extra`.
_SECRET_KEYS = {"token", "ticket", "password", "body", "authorization", "cookie"}


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from django.conf import settings

        record.instance_id = getattr(settings, "INSTANCE_ID", None)
        if getattr(record, "connection_id", None) is None:
            record.connection_id = connection_id_var.get()
        if getattr(record, "user_id", None) is None:
            record.user_id = user_id_var.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_") or key.lower() in _SECRET_KEYS:
            continue
        if value is None:
            continue
        out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        exc = fields.pop("exc", None)
        line = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}" for k, v in fields.items())
        return f"{line}\n{exc}" if exc else line
