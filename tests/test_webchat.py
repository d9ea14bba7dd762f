"""The web chat: the page, and a conversation over its websocket."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from adapters.signing import signing_key
from adapters.webchat import SECRET_FILE, WebchatConfig
from tests.harness import Gateway


async def receive_until(socket: ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await socket.receive_json(timeout=20)
        frames.append(frame)
        if frame["type"] == kind:
            return frames


async def test_the_page_is_served_with_the_configured_title(gateway: Gateway) -> None:
    response = await gateway.http.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.text()
    assert 'content="Support"' in page and "{{title}}" not in page


async def test_a_conversation_over_the_websocket(gateway: Gateway) -> None:
    async with gateway.http.ws_connect("/webchat/ws") as socket:
        hello = await socket.receive_json(timeout=5)
        assert hello["type"] == "hello" and hello["history"] == []
        conversation_id = hello["conversation_id"]
        assert len(conversation_id.partition(".")[0]) == 32  # the id, then its signature

        await socket.send_json(
            {"type": "message", "text": "How long does shipping to Canada take?", "client_id": "c1"}
        )
        frames = await receive_until(socket, "reply")
        # A `history` frame may come at any time (the bus's subscription was confirmed or
        # renewed: the page redraws from it); the message's own frames come in this order.
        kinds = [frame["type"] for frame in frames if frame["type"] != "history"]
        assert kinds[0] == "ack" and "typing" in kinds
        reply = frames[-1]
        assert reply["role"] == "bot" and reply["text"]
        # The shipping page and the FAQ both answer this; either is a right source.
        sources = {source["source"] for source in reply["sources"]}
        assert sources & {"shipping-times-and-costs.md", "frequently-asked-questions.md"}

    # Reconnecting with the id restores the conversation.
    async with gateway.http.ws_connect(f"/webchat/ws?conversation={conversation_id}") as socket:
        hello = await socket.receive_json(timeout=5)
        assert hello["conversation_id"] == conversation_id
        assert [item["role"] for item in hello["history"]] == ["customer", "bot"]


async def test_a_resent_message_is_answered_once(gateway: Gateway) -> None:
    async with gateway.http.ws_connect("/webchat/ws") as socket:
        conversation_id = (await socket.receive_json(timeout=5))["conversation_id"]
        frame = {"type": "message", "text": "Do you ship to the UK?", "client_id": "same"}
        await socket.send_json(frame)
        await receive_until(socket, "reply")
        await socket.send_json(frame)  # the browser resends after a dropped ack
        # Messages of a conversation are processed in order, so once this one is answered
        # the resend before it has certainly been handled.
        await socket.send_json({"type": "message", "text": "Thanks!", "client_id": "next"})
        await receive_until(socket, "reply")
    key = f"webchat:{conversation_id.partition('.')[0]}"
    transcript = await gateway.runtime.store.transcript(key)
    roles = [entry.role.value for entry in transcript]
    assert roles == ["customer", "bot", "customer", "bot"]
    assert transcript[2].text == "Thanks!"


async def test_bad_frames_get_an_error_and_the_socket_stays_open(gateway: Gateway) -> None:
    async with gateway.http.ws_connect("/webchat/ws?conversation=not-a-valid-id") as socket:
        hello = await socket.receive_json(timeout=5)
        assert hello["conversation_id"] != "not-a-valid-id"  # guessable ids are replaced
        await socket.send_str("not json")
        assert (await socket.receive_json(timeout=5))["message"] == "frames must be JSON"
        await socket.send_json({"type": "message", "text": "  ", "client_id": "x"})
        assert await socket.receive_json(timeout=5) == {
            "type": "error",
            "message": "the message is empty",
            "client_id": "x",
        }
        await socket.send_json({"type": "message", "text": "z" * 5000, "client_id": "y"})
        assert "limit is 4000" in (await socket.receive_json(timeout=5))["message"]
        assert not socket.closed


async def test_only_ids_the_server_issued_are_resumed(gateway: Gateway) -> None:
    async with gateway.http.ws_connect("/webchat/ws") as socket:
        issued = (await socket.receive_json(timeout=5))["conversation_id"]
        await socket.send_json({"type": "message", "text": "Hello", "client_id": "c1"})
        await receive_until(socket, "ack")
    conversation_id, _, signature = issued.partition(".")
    forged = "0" * 32 if conversation_id != "0" * 32 else "1" * 32

    for attempt in (conversation_id, f"{conversation_id}.{'f' * 32}", f"{forged}.{signature}"):
        async with gateway.http.ws_connect(f"/webchat/ws?conversation={attempt}") as socket:
            hello = await socket.receive_json(timeout=5)
        assert hello["conversation_id"].partition(".")[0] not in (conversation_id, forged)
        assert hello["history"] == []

    async with gateway.http.ws_connect(f"/webchat/ws?conversation={issued}") as socket:
        hello = await socket.receive_json(timeout=5)
    assert hello["conversation_id"] == issued and hello["history"]


def test_web_processes_sharing_a_data_dir_or_the_secret_agree_on_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_WEBCHAT_SECRET", raising=False)
    kept = tmp_path / SECRET_FILE
    assert signing_key(WebchatConfig().secret, kept) == signing_key(WebchatConfig().secret, kept)
    assert kept.stat().st_mode & 0o077 == 0  # readable by its owner only

    monkeypatch.setenv("GATEWAY_WEBCHAT_SECRET", "shared-by-every-host")
    elsewhere = tmp_path / "elsewhere" / SECRET_FILE
    assert signing_key(WebchatConfig().secret, elsewhere) == b"shared-by-every-host"
    assert not elsewhere.exists()


async def test_the_page_and_the_api_send_security_headers(gateway: Gateway) -> None:
    page = await gateway.http.get("/")
    policy = page.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    found = re.search(r"<script>(.*?)</script>", await page.text(), flags=re.DOTALL)
    assert found is not None
    digest = base64.b64encode(hashlib.sha256(found.group(1).encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy  # the page's own script, and only it

    for response in (
        page,
        await gateway.http.get("/api/conversations/nobody"),
        await gateway.http.get("/healthz"),
        await gateway.http.get("/no-such-page"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_a_lone_surrogate_in_a_frame_is_answered_and_stored_as_a_replacement(
    gateway: Gateway,
) -> None:
    # Valid JSON whose string decodes to a lone surrogate, which nothing downstream (the
    # embedder, Redis, a provider) can encode: it becomes U+FFFD at the message model.
    frame = '{"type": "message", "text": "How long does shipping \\ud800 to Canada take?", '
    async with gateway.http.ws_connect("/webchat/ws") as socket:
        hello = await socket.receive_json(timeout=5)
        await socket.send_str(frame + '"client_id": "c1"}')
        reply = (await receive_until(socket, "reply"))[-1]
        assert reply["role"] == "bot" and reply["text"]
    key = f"webchat:{hello['conversation_id'].partition('.')[0]}"
    [customer, *_] = await gateway.runtime.store.transcript(key)
    assert customer.text == "How long does shipping \ufffd to Canada take?"
