"""Structured log lines: every record carries the instance id, and the connection and user ids
of the WebSocket or request it belongs to (context variables set by the consumer)."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import time
from typing import Any

connection_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("connection_id", default=None)
user_id_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("user_id", default=None)

# Also uvicorn's ``color_message``: the same text with terminal colour codes.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}
# Never written to a log line, whatever a caller passes in `extra`.
_SECRET_KEYS = {"token", "ticket", "password", "body", "authorization", "cookie"}
# Credentials inside text: a query string (uvicorn logs the handshake's ``?ticket=``) or an
# Authorization header value quoted in a message.
_SECRET_PARAM = re.compile(r"(?i)(\b(?:ticket|token|access_token|password|api_key|key)=)[^&\s\"']+")
_SECRET_SCHEME = re.compile(r"(\b(?:Token|Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}")
# At DEBUG the WebSocket libraries log the handshake's headers ("< cookie: sessionid=…") and
# every frame ("< TEXT '{…}' [54 bytes]"): headers that carry credentials lose their value,
# frames their payload (message bodies are user data), keeping direction, kind and size.
_SECRET_HEADER = re.compile(
    r"(?im)^([<>]?\s*(?:(?:set-)?cookie:|(?:proxy-)?authorization:(?:\s*[A-Za-z]+(?=\s))?)\s*).*$"
)
_FRAME = re.compile(r"(?m)^([<>] (?:TEXT|BINARY|CONT)\b)(.*?)(\s*\[\d+ bytes?\])?$")


def redact(text: str) -> str:
    """Mask credentials (and frame payloads) that a third-party log message may carry."""
    text = _SECRET_HEADER.sub(r"\1[redacted]", text)
    text = _FRAME.sub(lambda m: f"{m.group(1)} [payload redacted]{m.group(3) or ''}", text)
    return _SECRET_SCHEME.sub(r"\1[redacted]", _SECRET_PARAM.sub(r"\1[redacted]", text))


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
        "msg": redact(record.getMessage()),
    }
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_") or key.lower() in _SECRET_KEYS:
            continue
        if value is None:
            continue
        if isinstance(value, (int, float, bool)):
            out[key] = value
        else:
            out[key] = redact(value if isinstance(value, str) else str(value))
    if record.exc_info:
        out["exc"] = redact(logging.Formatter().formatException(record.exc_info))
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


class RepeatGate:
    """Lets one report of each kind of failure through per interval and counts the rest, so a
    client that hits the same failure with every frame cannot fill the log with tracebacks.
    The kind is the exception's type and the place it was raised."""

    def __init__(self, interval_seconds: float = 60.0, max_kinds: int = 1000) -> None:
        self.interval = interval_seconds
        self.max_kinds = max_kinds
        self._seen: dict[tuple[str, str, int], tuple[float, int]] = {}

    @staticmethod
    def kind(exc: BaseException) -> tuple[str, str, int]:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
        return (type(exc).__qualname__, *where)

    def allow(self, exc: BaseException) -> int | None:
        """None when this kind was reported within the interval (counted); otherwise how many
        of its kind were held back since its last report."""
        now = time.monotonic()
        key = self.kind(exc)
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) >= self.max_kinds:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0
