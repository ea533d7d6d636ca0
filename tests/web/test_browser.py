"""The browser app at / in headless Chromium: two users in two browser contexts, each on its
own instance behind nginx; an instance SIGKILLed under one of them; hostile bodies; origins."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlparse

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from harness.stack import Stack

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"


def sign_in(browser: Any, stack: Stack, username: str, avoid: str | None = None) -> Any:
    """A new browser context signed in as ``username`` whose socket is on an instance other
    than ``avoid`` (nginx balances round robin; a few reloads find the other one)."""
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(base(stack))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", stack.users[username]["password"])
    page.click("button[type=submit]")
    for _ in range(8):
        page.wait_for_function("window.chat && window.chat.state === 'connected'", timeout=15000)
        if avoid is None or instance_of(page) != avoid:
            break
        page.reload()
    assert avoid is None or instance_of(page) != avoid
    page.wait_for_selector(".conversation-item.active")
    return page


def base(stack: Stack) -> str:
    assert stack.nginx is not None
    return f"http://127.0.0.1:{stack.nginx.port}/"


def instance_of(page: Any) -> str:
    return str(page.evaluate("window.chat.instanceId"))


def bodies(page: Any) -> list[str]:
    return list(page.locator("#message-list .message .body").all_text_contents())


def send(page: Any, text: str) -> None:
    page.fill("#body", text)
    page.press("#body", "Enter")


def test_two_users_chat_with_typing_receipts_and_presence(browser, stack, artifacts):
    alice = sign_in(browser, stack, "alice")
    bob = sign_in(browser, stack, "bob", avoid=instance_of(alice))
    assert instance_of(alice) != instance_of(bob)
    assert re.fullmatch(r"Connected to instance inst-[ab]", alice.inner_text("#banner"))

    # Presence: bob's dot is green at alice's; bob sets a status with a text.
    bob_id = stack.users["bob"]["id"]
    alice.wait_for_selector(f'.member .dot[data-user="{bob_id}"][data-status="online"]')
    bob.select_option("#status", "busy")
    bob.fill("#status-text", "in a meeting")
    bob.click("#status-form button")
    alice.wait_for_selector(f'.member .dot[data-user="{bob_id}"][data-status="busy"]')
    alice.wait_for_selector(".member small:text-is('in a meeting')")

    # Sending with a local echo, delivered to the other instance.
    send(alice, "Hello Bob")
    alice.wait_for_selector(".message.mine:not(.pending) .body:text-is('Hello Bob')")
    bob.wait_for_selector(".message .body:text-is('Hello Bob')")

    # Typing indicator.
    bob.click("#body")
    bob.keyboard.type("Hi Al", delay=30)
    alice.wait_for_selector("#typing:text-is('bob is typing…')")
    bob.keyboard.type("ice")
    bob.press("#body", "Enter")
    alice.wait_for_selector(".message .body:text-is('Hi Alice')")
    alice.wait_for_function("document.getElementById('typing').textContent === ''")

    # Read receipts: bob has the conversation open, so alice's last message shows "Seen by bob".
    send(alice, "Did you see this?")
    alice.wait_for_selector(".message.mine .seen:text-is('Seen by bob')")

    # A hostile body is text, not markup, on both sides; no script ran.
    send(bob, XSS)
    alice.wait_for_selector(f".message .body:text-is('{XSS}')")
    bob.wait_for_selector(f".message.mine .body:text-is('{XSS}')")
    for page in (alice, bob):
        assert page.locator("#message-list img").count() == 0
        assert page.dialogs == []
    assert bodies(alice) == ["Hello Bob", "Hi Alice", "Did you see this?", XSS]

    alice.screenshot(path=str(artifacts / "conversation.png"))
    alice.context.close()
    bob.context.close()


def test_sigkilled_instance_page_reconnects_and_shows_what_was_sent_meanwhile_once(browser, stack, artifacts):
    alice = sign_in(browser, stack, "alice")
    bob = sign_in(browser, stack, "bob", avoid=instance_of(alice))
    victim = instance_of(alice)
    survivor = instance_of(bob)
    before = bodies(alice)
    send(alice, "before the crash")
    bob.wait_for_selector(".message .body:text-is('before the crash')")

    # Alice's network drops and her instance dies (SIGKILL: no close frame, no cleanup).
    alice.context.set_offline(True)
    stack.kill(victim)
    alice.wait_for_function("window.chat.state === 'reconnecting'", timeout=15000)
    sent = [f"while you were away {i}" for i in range(1, 4)]
    for text in sent:
        send(bob, text)
        bob.wait_for_selector(f".message.mine:not(.pending) .body:text-is('{text}')")

    # Back online: the SDK reconnects at once (through nginx, to the survivor) and resumes.
    alice.context.set_offline(False)
    alice.wait_for_selector(f"#banner:text-is('Connected to instance {survivor} · resumed 3 messages')", timeout=20000)
    alice.wait_for_selector(f".message .body:text-is('{sent[-1]}')")
    shown = bodies(alice)
    assert shown == [*before, "before the crash", *sent]
    # Bob read it while alice was away: the receipt comes back with the reconnect.
    alice.wait_for_selector(".message.mine .seen:text-is('Seen by bob')")
    assert len(set(alice.locator("#message-list .message").evaluate_all("els => els.map(e => e.dataset.id)"))) == len(
        shown
    )
    alice.screenshot(path=str(artifacts / "after-reconnect.png"))
    alice.context.close()
    bob.context.close()
    stack.restart(victim)


def test_session_cookie_works_only_from_the_allowed_origin(browser, stack):
    page = sign_in(browser, stack, "carol")
    nginx = urlparse(base(stack))
    ws_url = f"ws://{nginx.netloc}/ws/chat/"
    session = next(c["value"] for c in page.context.cookies() if c["name"] == "sessionid")

    # From the app's own origin the cookie alone opens a socket (no ticket).
    hello = page.evaluate(
        """url => new Promise((resolve) => {
            const ws = new WebSocket(url)
            ws.onmessage = (e) => { resolve(JSON.parse(e.data)); ws.close() }
            ws.onclose = (e) => resolve({closed: e.code})
        })""",
        ws_url,
    )
    assert hello["type"] == "hello"
    assert hello["user"]["username"] == "carol"

    # A page of another site in the same browser gets nothing with it.
    evil_page = "<!doctype html><title>another site</title>"
    page.route("http://evil.test/", lambda route: route.fulfill(body=evil_page, content_type="text/html"))
    page.goto("http://evil.test/")
    result = page.evaluate(
        """url => new Promise((resolve) => {
            const ws = new WebSocket(url)
            ws.onmessage = (e) => resolve({frame: JSON.parse(e.data)})
            ws.onclose = (e) => resolve({closed: e.code})
        })""",
        ws_url,
    )
    assert "frame" not in result
    ticket = page.evaluate(
        """url => fetch(url, {method: 'POST', credentials: 'include'}).then(r => r.status, () => 'blocked')""",
        f"{base(stack)}api/auth/ws-ticket/",
    )
    assert ticket in ("blocked", 403)

    # The server itself refuses the cookie from a foreign Origin (not only the browser's rules).
    def handshake(origin: str) -> Any:
        headers = {"Cookie": f"sessionid={session}", "Origin": origin}
        try:
            with ws_connect(ws_url, additional_headers=headers, open_timeout=5) as ws:
                return json.loads(ws.recv(timeout=5))
        except InvalidStatus as exc:
            return exc.response.status_code

    assert handshake("http://evil.test") == 403
    assert handshake(f"http://{nginx.netloc}")["user"]["username"] == "carol"
    page.context.close()
