"""A local fake of Discord: the REST API (`/api/v10/...`) and the gateway websocket.

discord.py's own HTTP client talks to it (`Route.BASE` pointed here); `GET /gateway/bot`
answers this fake's websocket, which speaks the gateway protocol as far as a bot needs: HELLO,
IDENTIFY -> READY (or close 4014 when `refuse_intents` is set, as Discord does for a privileged
intent the application was not granted), RESUME -> RESUMED, heartbeats acknowledged, and
`dispatch(event, data)` to push events such as MESSAGE_CREATE.

    async with FakeDiscord() as fake:
        ...                                # adapter configured with api_url=fake.api_url
        await fake.dispatch("MESSAGE_CREATE", dm_message("hi"))
        assert fake.messages("5001")[0]["content"] == "..."
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes import FakeServer

TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.fake.discord-token-for-tests"
BOT_ID = "100000000000000001"
APPLICATION_ID = "100000000000000002"
CUSTOMER_ID = "300000000000000001"
GUILD_ID = "400000000000000001"
DM_CHANNEL_ID = "500000000000000001"
GUILD_CHANNEL_ID = "500000000000000002"
THREAD_ID = "500000000000000003"

_BOT_USER = {
    "id": BOT_ID,
    "username": "kettle-support",
    "discriminator": "0",
    "global_name": "Kettle & Crane",
    "avatar": None,
    "bot": True,
}
_CUSTOMER = {
    "id": CUSTOMER_ID,
    "username": "ada",
    "discriminator": "0",
    "global_name": "Ada Lovelace",
    "avatar": None,
}
_snowflakes = itertools.count(600000000000000001)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any
    authorization: str | None


class FakeDiscord(FakeServer):
    """Discord on 127.0.0.1:<free port>; use as `async with FakeDiscord() as fake:`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.created: dict[str, dict[str, Any]] = {}  # message id -> the message, as edited
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.refuse_intents = False
        self._socket: web.WebSocketResponse | None = None
        self._sequence = itertools.count(1)
        self._connected = asyncio.Event()
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        super().__init__(app)

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            await self._socket.close()
        await super().__aexit__(*exc)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/gateway"

    def messages(self, channel_id: str) -> list[dict[str, Any]]:
        """The JSON bodies of every message created in `channel_id`, in order."""
        path = f"/channels/{channel_id}/messages"
        return [call.body for call in self.calls if call.method == "POST" and call.path == path]

    def edits(self, channel_id: str, message_id: str) -> list[str]:
        """The contents `message_id` was edited to, in order."""
        path = f"/channels/{channel_id}/messages/{message_id}"
        return [
            call.body["content"]
            for call in self.calls
            if (call.method, call.path) == ("PATCH", path)
        ]

    def interaction_responses(self) -> list[dict[str, Any]]:
        """The bodies of every interaction response, in order."""
        return [
            call.body
            for call in self.calls
            if call.method == "POST" and call.path.startswith("/interactions/")
        ]

    def typed(self, channel_id: str) -> int:
        path = f"/channels/{channel_id}/typing"
        return sum(1 for call in self.calls if call.method == "POST" and call.path == path)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send one gateway DISPATCH (op 0) to the connected bot."""
        await asyncio.wait_for(self._connected.wait(), 10)
        assert self._socket is not None
        await self._socket.send_str(
            json.dumps({"op": 0, "t": event, "s": next(self._sequence), "d": data})
        )

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body else None
        self.calls.append(Call(request.method, path, body, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"Bot {TOKEN}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        match request.method, path.split("/")[1:]:
            case "GET", ["users", "@me"]:
                return _json(_BOT_USER)
            case "GET", ["oauth2", "applications", "@me"]:
                return _json(_application())
            case "GET", ["gateway", "bot"]:
                limits = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
                return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limits})
            case "POST", ["channels", channel_id, "messages"]:
                created = _created_message(channel_id, body)
                self.created[created["id"]] = created
                return _json(created)
            case "PATCH", ["channels", channel_id, "messages", message_id]:
                # https://discord.com/developers/docs/resources/message#edit-message
                edited = self.created.get(message_id)
                if edited is None or edited["channel_id"] != channel_id:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                edited.update(content=body.get("content", edited["content"]))
                edited["edited_timestamp"] = "2026-11-23T12:00:01.000000+00:00"
                return _json(edited)
            case "POST", ["channels", _, "typing"]:
                return web.Response(status=204)
            case "POST", ["interactions", interaction_id, _, "callback"]:
                # https://discord.com/developers/docs/interactions/receiving-and-responding#create-interaction-response
                callback = {"id": interaction_id, "type": 3, "response_message_loading": False}
                return _json({"interaction": callback, "resource": {"type": body["type"]}})
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None})
        async for frame in socket:
            if frame.type is not WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            match payload["op"]:
                case 1:  # heartbeat
                    await socket.send_json({"op": 11, "d": None, "s": None, "t": None})
                case 2:  # identify
                    self.identifies.append(payload["d"])
                    if self.refuse_intents:
                        await socket.close(code=4014, message=b"Disallowed intent(s).")
                        break
                    await self._send_ready(socket)
                case 6:  # resume
                    self.resumes.append(payload["d"])
                    self._connected.set()
                    await self.dispatch("RESUMED", {})
        if self._socket is socket:
            self._connected.clear()
        return socket

    async def _send_ready(self, socket: web.WebSocketResponse) -> None:
        ready = {
            "v": 10,
            "user": _BOT_USER,
            "guilds": [],
            "session_id": "fake-session",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": APPLICATION_ID, "flags": 0},
        }
        self._connected.set()
        await self.dispatch("READY", ready)


def _json(data: Any, *, status: int = 200) -> web.Response:
    """JSON exactly as Discord labels it: discord.py parses a body only when the content type is
    `application/json` with no charset parameter."""
    body = json.dumps(data).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def _application() -> dict[str, Any]:
    owner = {"id": "200000000000000001", "username": "owner", "discriminator": "0", "avatar": None}
    return {
        "id": APPLICATION_ID,
        "name": "Kettle & Crane",
        "description": "",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": owner,
        "verify_key": "0" * 64,
        "flags": 0,
    }


def _created_message(channel_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(next(_snowflakes)),
        "channel_id": channel_id,
        "type": 0,
        "content": body.get("content", ""),
        "components": body.get("components", []),
        "author": _BOT_USER,
        "timestamp": "2026-11-23T12:00:00.000000+00:00",
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
    }


def message_create(
    content: str,
    *,
    channel_id: str = DM_CHANNEL_ID,
    guild_id: str | None = None,
    mentions: list[dict[str, Any]] | None = None,
    attachments: list[dict[str, Any]] | None = None,
    author_id: str = CUSTOMER_ID,
) -> dict[str, Any]:
    """A MESSAGE_CREATE event's `d`, as the gateway sends it (guild events carry `member`)."""
    author = {**_CUSTOMER, "id": author_id}
    data: dict[str, Any] = {
        "id": str(next(_snowflakes)),
        "channel_id": channel_id,
        "type": 0,
        "content": content,
        "author": author,
        "timestamp": "2026-11-23T12:00:00.000000+00:00",
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": mentions or [],
        "mention_roles": [],
        "attachments": attachments or [],
        "embeds": [],
        "pinned": False,
        "nonce": str(int(time.time() * 1000)),
    }
    if guild_id is not None:
        data["guild_id"] = guild_id
        data["member"] = {
            "roles": [],
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
        }
    return data


def bot_mention() -> dict[str, Any]:
    """The bot as it appears in a message's `mentions`."""
    return dict(_BOT_USER)


def button_press(custom_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """An INTERACTION_CREATE: the customer pressed a button of `message` in their DM."""
    return {
        "id": str(next(_snowflakes)),
        "application_id": APPLICATION_ID,
        "type": 3,  # MESSAGE_COMPONENT
        "token": "interaction-token",
        "version": 1,
        "data": {"custom_id": custom_id, "component_type": 2},
        "channel_id": message["channel_id"],
        "channel": {"id": message["channel_id"], "type": 1},  # DM
        "user": _CUSTOMER,
        "message": message,
        "locale": "en-US",
        "app_permissions": "0",
        "entitlements": [],
        "authorizing_integration_owners": {},
        "attachment_size_limit": 10485760,
    }
