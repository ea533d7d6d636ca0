"""The text frame built once for every socket is the frame websockets itself would write."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from realtime import wire


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_the_servers_own_serialisation(size: int) -> None:
    text = ("é" if size % 2 else "a") * size
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert wire.text_frame(text) == expected


def test_text_frame_is_built_once_for_the_same_text_and_again_for_another() -> None:
    first = "".join(["{", '"type":"message.new"', "}"])
    built = wire.text_frame(first)
    assert wire.text_frame(first) is built  # the fan-out's next socket reuses the bytes
    other = "".join(["{", '"type":"message.old"', "}"])  # same length, different text
    assert wire.text_frame(other) == Frame(Opcode.TEXT, other.encode()).serialize(mask=False, extensions=[])
    assert wire.text_frame(first) == built


def test_only_the_uvicorn_sansio_protocol_gets_direct_writes() -> None:
    async def send(message: dict[str, object]) -> None:
        return None

    assert wire.direct_protocol(send) is None
    assert wire.direct_protocol(print) is None  # a bound builtin: no protocol behind it


def test_a_protocol_without_the_expected_state_gets_the_asgi_send(monkeypatch) -> None:
    class Changed(wire.WebSocketsSansIOProtocol):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:  # a later uvicorn that renamed its state
            self.conn = object()

        async def send(self, message: dict[str, object]) -> None:
            return None

    assert wire.direct_protocol(Changed().send) is None
