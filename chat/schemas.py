"""The JSON Schema of every frame chat owns (client and server), registered with the protocol."""

from __future__ import annotations

from realtime.protocol import INT, NULLABLE_STRING, STRING, TIMESTAMP, obj, register_frame

MESSAGE = obj(
    {
        "id": STRING,
        "conversation_id": STRING,
        "seq": INT,
        "sender_id": {"type": ["integer", "null"]},
        "body": STRING,
        "client_msg_id": NULLABLE_STRING,
        "created_at": TIMESTAMP,
    }
)

CONVERSATION = obj(
    {
        "id": STRING,
        "title": STRING,
        "owner_id": {"type": ["integer", "null"]},
        "created_at": TIMESTAMP,
        "last_seq": INT,
        "last_message_at": TIMESTAMP,
        "participants": {
            "type": "array",
            "items": obj({"user_id": INT, "username": STRING, "role": STRING, "joined_at": TIMESTAMP}),
        },
    }
)

READ_RECEIPT = {"conversation_id": STRING, "user_id": INT, "seq": INT, "read_at": TIMESTAMP}
TYPING_STATE = {"enum": ["start", "stop"]}

register_frame("server", "message.new", {"message": MESSAGE})
register_frame("server", "typing", {"conversation_id": STRING, "user_id": INT, "state": TYPING_STATE})
register_frame("server", "read", READ_RECEIPT)
register_frame("server", "conversation.joined", {"conversation": CONVERSATION})
register_frame("server", "conversation.left", {"conversation_id": STRING})
register_frame("server", "resume.truncated", {"conversation_id": STRING, "next_seq": INT})

register_frame(
    "client",
    "message.send",
    {"conversation_id": STRING, "body": STRING, "client_msg_id": NULLABLE_STRING},
    optional=("client_msg_id",),
)
register_frame("client", "typing", {"conversation_id": STRING, "state": TYPING_STATE})
register_frame("client", "read", {"conversation_id": STRING, "seq": INT})
register_frame(
    "client",
    "resume",
    {"cursors": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}, "maxProperties": 1000}},
)

# The acks chat's handlers answer with (the ``ack`` frame carries these beside ``id``).
ACKS = {
    "message.send": obj({"message": MESSAGE, "repeat": {"type": "boolean"}}),
    "typing": obj({"broadcast": {"type": "boolean"}}),
    "read": obj(READ_RECEIPT),
    "resume": obj({"resumed": {"type": "object", "additionalProperties": INT}}),
}
