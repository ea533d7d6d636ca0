"""docs/protocol.md stays true to the protocol: every frame type and close code it has."""

from __future__ import annotations

from pathlib import Path

import chat.schemas
import presence.schemas
from realtime import protocol
from realtime.protocol import CloseCode

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def test_every_frame_type_is_in_the_reference():
    assert chat.schemas and presence.schemas
    for frame_type in [*protocol.SERVER_FRAMES, *protocol.CLIENT_FRAMES]:
        assert f"`{frame_type}`" in DOC, frame_type


def test_every_close_code_is_in_the_reference():
    for code in CloseCode:
        assert f"| {code.value} |" in DOC, code
