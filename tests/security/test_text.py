"""Text no server can store or send, and documents no parser should recurse into, are a 400
wherever they appear, over HTTP and the socket alike; oversize HTTP bodies are a 413. Against a
real uvicorn process: its send is what fails to encode a lone surrogate."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import open_ws
from tests.security.conftest import ahttp, assert_envelope

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SURROGATE = "\ud83d"  # the first half of 😀, as a client that cuts a string at 64 UTF-16 units sends it
BAD_TEXT = {"lone surrogate": f"cut {SURROGATE}", "nul": "a\x00b"}


def wire(frame: dict) -> str:
    """The frame as a client's JSON encoder sends it: non-ASCII as \\u escapes."""
    return json.dumps(frame, ensure_ascii=True)


async def test_a_lone_surrogate_in_a_frame_id_is_a_400_and_the_socket_keeps_answering(app, people):
    server = app.servers["a"]
    ws = await open_ws(server.ws_url, people["alice"])
    await ws.send(wire({"type": "ping", "id": SURROGATE}))
    err = await ws.expect_type("error")
    assert_envelope(err, 400, "invalid")
    assert err["id"] is None and "id" in err["errors"]

    pong = await ws.request({"type": "ping", "id": "after"})
    assert pong == {"type": "pong", "id": "after"}
    ack = await ws.request({"type": "message.send", "id": "m", "conversation_id": people["cid"], "body": "still here"})
    assert ack["type"] == "ack" and ack["message"]["body"] == "still here"
    await ws.close()


@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
async def test_bad_text_in_any_field_is_the_same_400_over_the_socket_and_http(app, people, kind):
    server, bad, token, cid = app.servers["a"], BAD_TEXT[kind], people["alice"].token, people["cid"]
    ws = await open_ws(server.ws_url, people["alice"])
    socket_cases = {
        "body": {"type": "message.send", "conversation_id": cid, "body": bad},
        "client_msg_id": {"type": "message.send", "conversation_id": cid, "body": "ok", "client_msg_id": bad},
        "text": {"type": "status.set", "status": "away", "text": bad},
        "conversation_id": {"type": "typing", "conversation_id": bad, "state": "start"},
        "state": {"type": "typing", "conversation_id": cid, "state": bad},
    }
    for field, frame in socket_cases.items():
        err = await ws.request({**frame, "id": field})
        assert err["type"] == "error", (field, err)
        assert_envelope(err, 400, "invalid")
        assert field in err["errors"], (field, err)
    # A key of an ignored field too: nothing with such text is parsed past the door.
    err = await ws.request({"type": "ping", "id": "key", f"x{bad}": 1})
    assert err["type"] == "error" and err["status"] == 400
    assert (await ws.request({"type": "ping", "id": "alive"}))["type"] == "pong"
    await ws.close()

    http_cases = [
        ("POST", f"/api/conversations/{cid}/messages/", {"body": bad}, "body"),
        ("POST", f"/api/conversations/{cid}/messages/", {"body": "ok", "client_msg_id": bad}, "client_msg_id"),
        ("PUT", "/api/me/status/", {"status": "away", "text": bad}, "text"),
        ("POST", "/api/conversations/", {"title": bad, "participant_ids": []}, "title"),
        ("POST", f"/api/conversations/{cid}/typing/", {"state": "start", f"x{bad}": 1}, None),
    ]
    for method, path, body, field in http_cases:
        status, _, reply = await ahttp(method, server.url + path, token, body)
        assert status == 400, (path, body, reply)
        assert_envelope(reply, 400, "invalid")
        if field is not None:
            assert field in reply["errors"], reply


async def test_deep_nesting_is_a_400_over_the_socket_and_http(app, people):
    server, cid = app.servers["a"], people["cid"]
    ws = await open_ws(server.ws_url, people["alice"])
    depth = 30_000
    await ws.send('{"type":"ping","id":"deep","x":' + "[" * depth + "]" * depth + "}")
    err = await ws.expect_type("error")
    assert_envelope(err, 400, "bad_request")
    # Deep, but in objects and with fewer brackets than a naive scan would need to notice.
    nested = {"type": "ping", "id": "deep2"}
    for _ in range(40):
        nested = {"a": nested}
    await ws.send(json.dumps({"type": "ping", "id": "d2", "x": nested}))
    err = await ws.expect_type("error")
    assert_envelope(err, 400, "bad_request")
    assert (await ws.request({"type": "ping", "id": "alive"}))["type"] == "pong"
    await ws.close()

    depth = 50_000
    raw = ('{"body":' + "[" * depth + "]" * depth + "}").encode()
    status, _, reply = await ahttp(
        "POST", f"{server.url}/api/conversations/{cid}/messages/", people["alice"].token, raw=raw
    )
    assert status == 400, reply
    assert_envelope(reply, 400, "bad_request")


async def test_an_oversize_http_body_is_413_too_large(app, people):
    server, cid = app.servers["a"], people["cid"]
    raw = json.dumps({"body": "x" * 3_000_000}).encode()
    status, _, reply = await ahttp(
        "POST", f"{server.url}/api/conversations/{cid}/messages/", people["alice"].token, raw=raw
    )
    assert status == 413, reply
    assert_envelope(reply, 413, "too_large")
