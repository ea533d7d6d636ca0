"""The wire protocol: close codes, frame encoding, typed frames, the layer envelope, schemas.

Client frames and server frames are JSON objects with a ``type``. The frames of the delivery
layer itself (``hello``, ``ack``, ``error``, ``pong``) are defined here; each app registers the
frames it owns with ``register_frame`` (a JSON Schema per type), so the schema of the whole
protocol is the union of them, published at ``/api/schema/ws/`` next to the OpenAPI schema and
checked by the tests against every frame the server produces.

An *envelope* is what travels through the bus between instances. Its ``audience`` says who gets
its frame on each instance::

    {"kind": "conversation", "id": "42", "exclude_user": 7}   # sockets in a conversation
    {"kind": "user", "id": 7}                                  # every socket of a user
    {"kind": "instance", "id": "web-1"}                        # every socket on an instance
"""

from __future__ import annotations

import enum
import json
from typing import Any, Literal, NotRequired, TypedDict


class CloseCode(enum.IntEnum):
    """Every close code the server sends (and 1006, which it only records)."""

    DISCONNECTED = 4000  # by an operator
    NOT_AUTHENTICATED = 4401
    DEACTIVATED = 4403
    TOO_MANY_SOCKETS = 4429  # WS_MAX_SOCKETS_PER_USER reached
    SLOW_CONSUMER = 4008
    POLICY = 1008  # sustained abuse
    TOO_BIG = 1009
    FANOUT_LOST = 1011
    SHUTDOWN = 1012
    ABNORMAL = 1006  # recorded, never sent: the socket was gone when a write failed


# Limits of the protocol itself (the apps' limits live with their models).
REQUEST_ID_MAX_CHARS = 64


def encode(frame: dict[str, Any]) -> str:
    """One frame as the text of a WebSocket message (compact; non-ASCII kept as is)."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


# --- Frames of the delivery layer -------------------------------------------------------------


class HelloUser(TypedDict):
    id: int
    username: str


class Hello(TypedDict):
    type: Literal["hello"]
    connection_id: str
    instance_id: str
    user: HelloUser
    heartbeat_interval: int
    reconnect_window_ms: int


class ErrorFrame(TypedDict):
    type: Literal["error"]
    id: str | None
    status: int
    code: str
    detail: str
    errors: NotRequired[dict[str, list[str]]]
    retry_after: NotRequired[float]


# --- The layer envelope -------------------------------------------------------------------------

AudienceKind = Literal["conversation", "user", "instance"]


class Audience(TypedDict):
    kind: AudienceKind
    id: str | int
    exclude_user: NotRequired[int]
    only_user: NotRequired[int]


class Control(TypedDict):
    """A routing change applied on every instance that holds the user's sockets."""

    op: Literal["join", "leave", "disconnect"]
    user_id: int
    conversation_id: NotRequired[str]
    last_seq: NotRequired[int]
    code: NotRequired[int]


class Envelope(TypedDict):
    type: Literal["fanout"]
    group: NotRequired[str]  # the bus group it was published to (set by the publisher)
    audience: Audience
    frame: dict[str, Any] | None
    control: NotRequired[Control]
    # Ordered delivery: frames of one conversation carry its gap-free seq (realtime.sequencer).
    seq: NotRequired[int]
    # A state that ends by itself (typing): after this many seconds the router delivers
    # ``expiry_frame`` to the same audience, unless an envelope with the same key came first.
    expires: NotRequired[dict[str, Any]]
    # A fact about one subject delivered once per instance however many groups carry it
    # (presence): ``{"user_id", "version", "conversation_ids", "own_frame"}``.
    versioned: NotRequired[dict[str, Any]]


def envelope(
    audience: Audience,
    frame: dict[str, Any] | None,
    *,
    control: Control | None = None,
    seq: int | None = None,
    expires: dict[str, Any] | None = None,
    versioned: dict[str, Any] | None = None,
) -> Envelope:
    env: Envelope = {"type": "fanout", "audience": audience, "frame": frame}
    if control is not None:
        env["control"] = control
    if seq is not None:
        env["seq"] = seq
    if expires is not None:
        env["expires"] = expires
    if versioned is not None:
        env["versioned"] = versioned
    return env


def group_of(audience: Audience) -> str:
    """The bus group that carries an audience (``c.42``, ``u.7``, ``i.web-1``)."""
    return f"{audience['kind'][0]}.{audience['id']}"


def conversation_group(conversation_id: object) -> str:
    return f"c.{conversation_id}"


def user_group(user_id: object) -> str:
    return f"u.{user_id}"


def instance_group(instance_id: str) -> str:
    return f"i.{instance_id}"


# --- Schemas ----------------------------------------------------------------------------------

SERVER_FRAMES: dict[str, dict[str, Any]] = {}
CLIENT_FRAMES: dict[str, dict[str, Any]] = {}


def obj(properties: dict[str, Any], *, optional: tuple[str, ...] = (), extra: bool = False) -> dict[str, Any]:
    """A JSON Schema object whose properties are all required except ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": extra,
    }


STRING = {"type": "string"}
INT = {"type": "integer"}
NULLABLE_STRING = {"type": ["string", "null"]}
TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
REQUEST_ID = {"type": "string", "maxLength": REQUEST_ID_MAX_CHARS}


def register_frame(
    direction: Literal["server", "client"], frame_type: str, properties: dict[str, Any], **kw: Any
) -> None:
    """Declare one frame type and its fields (``type`` and, for client frames, ``id`` added)."""
    props = {"type": {"const": frame_type}, **properties}
    if direction == "client":
        props.setdefault("id", REQUEST_ID)
        kw["optional"] = (*kw.get("optional", ()), "id")
    (SERVER_FRAMES if direction == "server" else CLIENT_FRAMES)[frame_type] = obj(props, **kw)


def document() -> dict[str, Any]:
    """The JSON Schema of the whole protocol (every frame of every app)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Chat WebSocket protocol",
        "description": "Frames on /ws/chat/. Close codes: "
        + ", ".join(f"{c.value} {c.name.lower()}" for c in CloseCode),
        "$defs": {
            "server": {name: schema for name, schema in sorted(SERVER_FRAMES.items())},
            "client": {name: schema for name, schema in sorted(CLIENT_FRAMES.items())},
        },
        "oneOf": [{"$ref": f"#/$defs/server/{name}"} for name in sorted(SERVER_FRAMES)]
        + [{"$ref": f"#/$defs/client/{name}"} for name in sorted(CLIENT_FRAMES)],
    }


register_frame(
    "server",
    "hello",
    {
        "connection_id": STRING,
        "instance_id": STRING,
        "user": obj({"id": INT, "username": STRING}),
        "heartbeat_interval": INT,
        "reconnect_window_ms": INT,
    },
)
register_frame("server", "ack", {"id": REQUEST_ID}, extra=True)
register_frame(
    "server",
    "error",
    {
        "id": {"type": ["string", "null"], "maxLength": REQUEST_ID_MAX_CHARS},
        "status": INT,
        "code": STRING,
        "detail": STRING,
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": STRING}},
        "retry_after": {"type": "number"},
    },
    optional=("errors", "retry_after"),
)
register_frame("server", "pong", {"id": REQUEST_ID}, optional=("id",))
register_frame("client", "ping", {})
