"""The JSON Schema of the frames presence owns, registered with the protocol."""

from __future__ import annotations

from realtime.protocol import INT, TIMESTAMP, obj, register_frame

from .models import STATUS_TEXT_MAX_CHARS, UserStatus

PRESENCE = {
    "user_id": INT,
    "status": {"enum": [*UserStatus.Status.values, "offline"]},
    "text": {"type": "string", "maxLength": STATUS_TEXT_MAX_CHARS},
    "online": {"type": "boolean"},
    "last_seen": TIMESTAMP,
    "version": INT,
}

register_frame("server", "presence", PRESENCE)
register_frame(
    "client",
    "status.set",
    {"status": {"enum": UserStatus.Status.values}, "text": {"type": "string", "maxLength": STATUS_TEXT_MAX_CHARS}},
    optional=("text",),
)
register_frame("client", "presence.sync", {})

ACKS = {
    "status.set": obj({"presence": obj(PRESENCE)}),
    "presence.sync": obj({"results": {"type": "array", "items": obj(PRESENCE)}}),
}
