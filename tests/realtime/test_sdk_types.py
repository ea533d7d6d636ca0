"""The client SDK's TypeScript declarations (clients/js/src/index.d.ts) agree with the
protocol's JSON Schema: every server frame type has an interface with exactly the schema's
fields (a field the schema makes optional is optional there too), the nested shapes (message,
presence, conversation) match, and every client frame of the declarations is one the schema
has, with its fields. A frame changed on one side only fails here."""

from __future__ import annotations

import re
from pathlib import Path

import chat.schemas
import presence.schemas
from realtime import protocol

DTS = (Path(__file__).resolve().parents[2] / "clients" / "js" / "src" / "index.d.ts").read_text()


def interfaces() -> dict[str, tuple[str | None, dict[str, bool]]]:
    """name -> (base, {field: optional})."""
    found: dict[str, tuple[str | None, dict[str, bool]]] = {}
    for match in re.finditer(r"export interface (\w+)(?: extends (\w+))? \{\n(.*?)\n\}", DTS, re.S):
        fields: dict[str, bool] = {}
        for line in match.group(3).splitlines():
            field = re.match(r"\s*(\w+)(\??):", line)
            if field:
                fields[field.group(1)] = bool(field.group(2))
        found[match.group(1)] = (match.group(2), fields)
    return found


def fields_of(name: str) -> dict[str, bool]:
    base, fields = interfaces()[name]
    return {**(fields_of(base) if base else {}), **fields}


def frame_interfaces() -> dict[str, str]:
    """frame type -> the interface declaring it."""
    out: dict[str, str] = {}
    for match in re.finditer(r"export interface (\w+)(?: extends \w+)? \{\n\s*type: '([\w.]+)'", DTS):
        out[match.group(2)] = match.group(1)
    return out


def schema_fields(schema: dict) -> dict[str, bool]:
    required = set(schema.get("required", []))
    return {name: name not in required for name in schema["properties"] if name != "type"}


def assert_same(declared: dict[str, bool], schema: dict, what: str, *, extra_optional: set[str] = frozenset()) -> None:
    expected = schema_fields(schema)
    declared = {k: v for k, v in declared.items() if k != "type"}
    assert set(declared) - extra_optional == set(expected), what
    for name, optional in expected.items():
        if optional:
            assert declared[name], f"{what}.{name} is optional in the schema but required in the declarations"


def test_every_server_frame_is_declared_with_the_schemas_fields():
    assert chat.schemas and presence.schemas
    declared = frame_interfaces()
    assert set(declared) == set(protocol.SERVER_FRAMES)
    for frame_type, schema in protocol.SERVER_FRAMES.items():
        if frame_type == "ack":  # the ack carries each handler's own fields
            assert "id" in fields_of(declared["ack"])
            continue
        assert_same(fields_of(declared[frame_type]), schema, declared[frame_type])


def test_nested_shapes_match():
    assert_same(fields_of("Message"), chat.schemas.MESSAGE, "Message")
    assert_same(
        fields_of("Presence"),
        {"properties": presence.schemas.PRESENCE, "required": list(presence.schemas.PRESENCE)},
        "Presence",
    )
    # The conversation list over HTTP adds the caller's unread count; frames do not carry it.
    assert_same(fields_of("Conversation"), chat.schemas.CONVERSATION, "Conversation", extra_optional={"unread"})


def test_every_declared_client_frame_is_in_the_schema_with_its_fields():
    union = DTS[DTS.index("export type ClientFrame") :].split("\n)\n", 1)[0]
    seen = set()
    for match in re.finditer(r"\{ type: '([\w.]+)'((?:; [^}]*)?) \}", union):
        frame_type, rest = match.group(1), match.group(2)
        seen.add(frame_type)
        declared = {m.group(1): bool(m.group(2)) for m in re.finditer(r"(\w+)(\??):", rest)}
        schema = protocol.CLIENT_FRAMES[frame_type]
        expected = {k: v for k, v in schema_fields(schema).items() if k != "id"}
        assert set(declared) == set(expected), frame_type
        for name, optional in expected.items():
            assert declared[name] == optional, f"{frame_type}.{name}"
    assert seen == set(protocol.CLIENT_FRAMES)
