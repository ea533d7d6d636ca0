"""Input checks shared by both interfaces: the HTTP parser and the WebSocket frame parser.

Text that PostgreSQL cannot store or a server cannot encode as UTF-8 is refused with a 400
where it enters, whatever field it is in: a NUL character, or a lone UTF-16 surrogate (JSON's
``"\\ud83d"`` without its pair, which a client that cuts a string at a UTF-16 length produces
by splitting an emoji). Nesting deeper than any request of the API needs is refused too,
before anything recurses over it.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping
from typing import IO, Any

from rest_framework import parsers

from .errors import Invalid

# No request or frame of the API nests deeper than a few levels; 32 leaves room and stays far
# below the interpreter's recursion limit for anything that walks a parsed body.
MAX_JSON_DEPTH = 32

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or sent as UTF-8 text, or None when it can."""
    match = _BAD_TEXT.search(value)
    if match is None:
        return None
    if match.group() == "\x00":
        return "Must not contain NUL characters."
    return f"Must not contain a lone surrogate (U+{ord(match.group()):04X}); send whole characters."


def check_text(value: str, field: str) -> str:
    """``value`` unchanged, or a 400 naming ``field`` when it holds NUL or a lone surrogate."""
    problem = text_problem(value)
    if problem is not None:
        raise Invalid.field(field, problem)
    return value


def loads(text: str) -> Any:
    """Parse a JSON document from a client: invalid JSON, nesting deeper than MAX_JSON_DEPTH, and
    NUL or a lone surrogate in any key or string are each a 400 (``bad_request`` / ``invalid``)."""
    data = parse(text)
    check_document(text, data)
    return data


def parse(text: str) -> Any:
    """JSON syntax only (a 400 for invalid JSON or nesting the parser cannot take); the caller
    runs :func:`check_document` on the result before using more than a top-level field."""
    try:
        return json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise Invalid("Not valid JSON.", code="bad_request") from None


def check_document(text: str, data: Any) -> None:
    """:func:`check_tree` for a document parsed from ``text``, skipped when it cannot find anything:
    bad text can only arrive as a \\u escape (strict JSON refuses raw control characters and the
    text is already valid UTF-8), and fewer brackets than the limit cannot nest deeper than it."""
    if "\\u" in text or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        check_tree(data)


def check_tree(data: Any) -> None:
    """Walk a parsed document without recursion; refuse deep nesting and bad text anywhere."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        node, depth, top = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(node, str):
            check_text(node, top or "non_field_errors")
        elif isinstance(node, Mapping):
            for key, value in node.items():
                field = top or (key if isinstance(key, str) and text_problem(key) is None else "")
                check_text(key, field or "non_field_errors")
                stack.append((value, depth + 1, field))
        elif isinstance(node, list):
            stack.extend((item, depth + 1, top) for item in node)


def _too_deep() -> Invalid:
    return Invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.", code="bad_request")


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser through :func:`loads`, so HTTP bodies get the socket's checks."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        try:
            text = codecs.getreader(encoding)(stream).read()
        except (UnicodeDecodeError, LookupError):
            raise Invalid("The body is not valid UTF-8 text.", code="bad_request") from None
        return loads(text)
