"""A local fake of the Slack Web API (and Socket Mode), plus helpers to sign Slack's requests.

The real `slack_sdk` client talks HTTP to it; nothing reaches slack.com. Every call is
recorded (method, arguments merged from query, form and JSON bodies, bearer token), messages
are kept per channel with their thread, and any method can be scripted to answer 429 with
`Retry-After` or an `{"ok": false, "error": ...}` answer.

    async with FakeSlack() as slack:
        client = AsyncWebClient(token=slack.token, base_url=slack.base_url)
        slack.rate_limit("chat.postMessage", times=1)        # next call: 429, Retry-After: 1
        await client.chat_postMessage(channel="C1", text="hi", thread_ts="1.000001")
        assert slack.replies("C1", "1.000001")[0]["text"] == "hi"
        assert [call.method for call in slack.calls] == ["chat.postMessage"] * 2

    # An inbound request as Slack would send it, signed with the app's signing secret:
    body, headers = signed_event(SECRET, message_event(channel="D1", user="U1", text="hi"))
    await http.post("/slack/events", data=body, headers=headers)
    body, headers = signed_interaction(SECRET, block_action("handoff_claim", "rest:c1", ...))

Payload builders: `message_event` (a DM, or a channel/thread message), `mention` (an
`app_mention`), `event_callback` (any event), `block_action` (a button press), `new_ts`.

Streamed messages (https://docs.slack.dev/reference/methods/chat.startStream): `chat.startStream`
posts a message in a thread (`thread_ts` required; outside a DM, `recipient_user_id` and
`recipient_team_id` too), `chat.appendStream` grows it while it is streaming, `chat.stopStream`
ends it (`"streaming"` turns false); each takes `markdown_text` or `chunks` of
`{"type": "markdown_text", "text": ...}`, as slack_sdk's `AsyncChatStream` sends them.

Socket Mode: `apps.connections.open` (with the app token) answers a websocket URL on the fake
itself; `await slack.push_socket(envelope_payload)` sends an envelope to the connected client
and returns the client's ack frame.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from slack_sdk.signature import SignatureVerifier

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-test-token"
SIGNING_SECRET = "test-signing-secret"
TEAM_ID = "T0000TEAM"
BOT_USER_ID = "U0000BOT"
BOT_ID = "B0000BOT"
API_APP_ID = "A0000APP"

# Methods that authenticate with the app-level token (Socket Mode), not the bot token.
_APP_TOKEN_METHODS = {"apps.connections.open"}


@dataclass(frozen=True)
class Call:
    method: str
    args: dict[str, Any]
    token: str | None


@dataclass
class _Script:
    """Scripted failures for one method, consumed one per call."""

    rate_limited: int = 0
    retry_after: int = 1
    errors: list[str] = field(default_factory=list)
    broken: int = 0  # calls answered HTTP 500 with a text/plain body, as a proxy in front might
    delay: float = 0.0  # seconds every call waits before it is answered


class FakeSlack:
    """The Slack Web API on 127.0.0.1:<free port>; use as `async with FakeSlack() as slack:`."""

    def __init__(
        self,
        *,
        token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        team_id: str = TEAM_ID,
        bot_user_id: str = BOT_USER_ID,
        bot_id: str = BOT_ID,
        users: dict[str, str] | None = None,
    ) -> None:
        self.token = token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        # user id -> display name, answered by users.info
        self.users: dict[str, str] = dict(users or {})
        self.calls: list[Call] = []
        # channel -> messages in post order (parents and thread replies alike)
        self.messages: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        # file id -> {"filename", "title", "content", "channel", "thread_ts", ...}
        self.files: dict[str, dict[str, Any]] = {}
        self._scripts: defaultdict[str, _Script] = defaultdict(_Script)
        self._clock = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._envelope_ids = itertools.count(1)
        self._sockets: set[web.WebSocketResponse] = set()
        self._socket_connected = asyncio.Event()
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        app = web.Application()
        app.router.add_post("/api/upload/{file_id}", self._upload)
        app.router.add_get("/socket-mode", self._socket)
        app.router.add_route("*", "/api/{method}", self._method)
        self._server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> FakeSlack:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for socket in list(self._sockets):
            await socket.close()
        await self._server.close()

    @property
    def base_url(self) -> str:
        """What `AsyncWebClient(base_url=...)` and `slack.api_url` take."""
        return str(self._server.make_url("/api/"))

    # -- scripting ---------------------------------------------------------------------------

    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 1) -> None:
        """The next `times` calls of `method` answer 429 with `Retry-After: retry_after`."""
        script = self._scripts[method]
        script.rate_limited += times
        script.retry_after = retry_after

    def fail(self, method: str, error: str, *, times: int = 1) -> None:
        """The next `times` calls of `method` answer HTTP 200 `{"ok": false, "error": error}`."""
        self._scripts[method].errors.extend([error] * times)

    def break_next(self, method: str, *, times: int = 1) -> None:
        """The next `times` calls of `method` answer HTTP 500 with a text/plain body."""
        self._scripts[method].broken += times

    def slow(self, method: str, seconds: float) -> None:
        """Every call of `method` is answered after `seconds`."""
        self._scripts[method].delay = seconds

    # -- inspection --------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def posted(self, channel: str) -> list[dict[str, Any]]:
        """Messages the bot posted in `channel`, in order (thread replies included)."""
        return list(self.messages[channel])

    def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The thread's replies (the parent excluded), in order."""
        return [
            message
            for message in self.messages[channel]
            if message.get("thread_ts") == thread_ts and message["ts"] != thread_ts
        ]

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages[channel] if m["ts"] == ts), None)

    async def wait_for(self, method: str, count: int = 1, *, within: float = 5.0) -> list[Call]:
        """Wait until `method` was called at least `count` times; return those calls."""
        deadline = time.monotonic() + within
        while len(calls := self.calls_to(method)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} called {len(calls)} times, expected {count}")
            await asyncio.sleep(0.01)
        return calls

    # -- the Web API -------------------------------------------------------------------------

    async def _method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _arguments(request)
        token = _bearer(request) or args.pop("token", None)
        self.calls.append(Call(method, args, token))
        script = self._scripts[method]
        await asyncio.sleep(script.delay)
        if script.broken:
            script.broken -= 1
            return web.Response(status=500, text="upstream failed", content_type="text/plain")
        if script.rate_limited:
            script.rate_limited -= 1
            # https://api.slack.com/docs/rate-limits: 429, Retry-After, ok=false ratelimited
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(script.retry_after)},
            )
        if script.errors:
            return _error(script.errors.pop(0))
        expected = self.app_token if method in _APP_TOKEN_METHODS else self.token
        if token is None:
            return _error("not_authed")
        if token != expected:
            return _error("invalid_auth")
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return _error("unknown_method")
        try:
            return web.json_response({"ok": True, **handler(args)})
        except _Failure as failure:
            return _error(str(failure))

    def _auth_test(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.test/",
            "team": "Fake team",
            "user": "gateway",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel:
            raise _Failure("channel_not_found")
        if not args.get("text") and not args.get("blocks"):
            raise _Failure("no_text")
        message = self._store(
            channel,
            args.get("thread_ts"),
            text=args.get("text", ""),
            blocks=_decoded(args.get("blocks")) or [],
        )
        return {"channel": channel, "ts": message["ts"], "message": message}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.message(args.get("channel", ""), str(args.get("ts", "")))
        if message is None:
            raise _Failure("message_not_found")
        if "text" in args:
            message["text"] = args["text"]
        if "blocks" in args:
            message["blocks"] = _decoded(args["blocks"]) or []
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {"channel": message["channel"], "ts": message["ts"], "text": message["text"]}

    def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts = args.get("channel"), args.get("thread_ts")
        if not channel:
            raise _Failure("channel_not_found")
        if not thread_ts:
            raise _Failure("invalid_arguments")
        direct = str(channel).startswith("D")
        if not direct and not (args.get("recipient_user_id") and args.get("recipient_team_id")):
            raise _Failure("invalid_arguments")  # required outside a DM
        message = self._store(channel, thread_ts, text=_streamed(args), streaming=True)
        return {"channel": channel, "ts": message["ts"]}

    def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        message["text"] += _streamed(args)
        return {"channel": message["channel"], "ts": message["ts"]}

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        message["text"] += _streamed(args)
        message["streaming"] = False
        return {"channel": message["channel"], "ts": message["ts"], "message": message}

    def _streaming(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.message(args.get("channel", ""), str(args.get("ts", "")))
        if message is None:
            raise _Failure("message_not_found")
        if not message.get("streaming"):
            raise _Failure("message_not_in_streaming_state")
        return message

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("user", "")
        if user not in self.users:
            raise _Failure("user_not_found")
        name = self.users[user]
        return {
            "user": {
                "id": user,
                "team_id": self.team_id,
                "name": name.lower().replace(" ", "."),
                "real_name": name,
                "profile": {"display_name": name, "real_name": name},
            }
        }

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel", ""), str(args.get("ts", ""))
        parent = self.message(channel, ts)
        if parent is None:
            raise _Failure("thread_not_found")
        return {"messages": [parent, *self.replies(channel, ts)], "has_more": False}

    def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.message(args.get("channel", ""), str(args.get("timestamp", "")))
        if message is None:
            raise _Failure("message_not_found")
        message.setdefault("reactions", []).append(args.get("name"))
        return {}

    def _files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("filename") or not str(args.get("length", "")).isdigit():
            raise _Failure("invalid_arguments")
        file_id = f"F{next(self._file_ids):08d}"
        self.files[file_id] = {
            "id": file_id,
            "filename": args["filename"],
            "length": int(args["length"]),
            "content": None,
        }
        return {
            "upload_url": str(self._server.make_url(f"/api/upload/{file_id}")),
            "file_id": file_id,
        }

    async def _upload(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return web.Response(status=404, text="unknown upload")
        file["content"] = await request.read()
        self.calls.append(
            Call("upload", {"file_id": file["id"], "size": len(file["content"])}, None)
        )
        return web.Response(text=f"OK - {len(file['content'])}")

    def _files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        completed = []
        for item in _decoded(args.get("files")) or []:
            file = self.files.get(item.get("id", ""))
            if file is None or file["content"] is None:
                raise _Failure("file_not_found")
            channel = args.get("channel_id")
            file.update(title=item.get("title"), channel=channel, thread_ts=args.get("thread_ts"))
            if channel:
                self._store(
                    channel,
                    args.get("thread_ts"),
                    text=args.get("initial_comment", ""),
                    files=[{"id": file["id"], "title": file["title"], "name": file["filename"]}],
                )
            completed.append({"id": file["id"], "title": file["title"]})
        return {"files": completed}

    def _apps_connections_open(self, _args: dict[str, Any]) -> dict[str, Any]:
        url = self._server.make_url("/socket-mode").with_scheme("ws")
        return {"url": str(url.with_query(ticket=str(next(self._envelope_ids))))}

    def _store(self, channel: str, thread_ts: Any, **content: Any) -> dict[str, Any]:
        """Keep a message the bot posted, as Slack would show it in the channel."""
        message = {
            "type": "message",
            "channel": channel,
            "ts": self._next_ts(),
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            **content,
        }
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
        self.messages[channel].append(message)
        return message

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._clock):06d}"

    # -- Socket Mode -------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.add(socket)
        await socket.send_json(
            {"type": "hello", "num_connections": 1, "connection_info": {"app_id": API_APP_ID}}
        )
        self._socket_connected.set()
        try:
            async for frame in socket:
                if frame.type is WSMsgType.TEXT:
                    ack = json.loads(frame.data)
                    future = self._acks.pop(ack.get("envelope_id", ""), None)
                    if future is not None and not future.done():
                        future.set_result(ack)
        finally:
            self._sockets.discard(socket)
            if not self._sockets:
                self._socket_connected.clear()
        return socket

    async def push_socket(
        self,
        payload: dict[str, Any],
        *,
        type: str = "events_api",
        retry_attempt: int = 0,
        within: float = 5.0,
    ) -> dict[str, Any]:
        """Send one envelope to the connected Socket Mode client; return its ack frame."""
        await asyncio.wait_for(self._socket_connected.wait(), within)
        envelope_id = f"envelope-{next(self._envelope_ids)}"
        acked = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = acked
        envelope = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": type,
            "accepts_response_payload": type != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        for socket in list(self._sockets):
            await socket.send_json(envelope)
        return await asyncio.wait_for(acked, within)


class _Failure(Exception):
    """Raised by a method handler to answer `{"ok": false, "error": ...}`."""


def _error(error: str) -> web.Response:
    # Web API errors are HTTP 200 with ok=false: https://api.slack.com/web#responses
    return web.json_response({"ok": False, "error": error})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ") if header.startswith("Bearer ") else None


async def _arguments(request: web.Request) -> dict[str, Any]:
    """Query string, form body and JSON body merged, as Slack accepts any of them."""
    args: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return args
    if request.content_type == "application/json":
        args.update(await request.json())
    else:
        args.update(parse_qsl(await request.text(), keep_blank_values=True))
    return args


def _streamed(args: dict[str, Any]) -> str:
    """The text a stream call adds: its `markdown_text`, then its markdown chunks."""
    chunks = _decoded(args.get("chunks")) or []
    texts = [chunk.get("text", "") for chunk in chunks if chunk.get("type") == "markdown_text"]
    return str(args.get("markdown_text") or "") + "".join(texts)


def _decoded(value: Any) -> Any:
    """Form-encoded calls carry lists (blocks, files) as JSON strings; JSON calls as lists."""
    return json.loads(value) if isinstance(value, str) and value else value


# -- signed inbound requests -------------------------------------------------------------------


def signature(secret: str, timestamp: int | str, body: str) -> str:
    """`v0=` + hex HMAC-SHA256 over `v0:{timestamp}:{body}` (Slack's own SDK computes it)."""
    # https://api.slack.com/authentication/verifying-requests-from-slack
    return SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body) or ""


def signed_headers(
    secret: str,
    body: str,
    *,
    content_type: str = "application/json",
    timestamp: int | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
) -> dict[str, str]:
    """The headers Slack sends with `body`; `retry_num` marks a redelivery."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": signature(secret, timestamp, body),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    return headers


def signed_event(
    secret: str, payload: dict[str, Any], **options: Any
) -> tuple[str, dict[str, str]]:
    """An Events API request (JSON body) and its signed headers."""
    body = json.dumps(payload)
    return body, signed_headers(secret, body, **options)


def signed_interaction(
    secret: str, payload: dict[str, Any], **options: Any
) -> tuple[str, dict[str, str]]:
    """An interactivity request: form-encoded `payload=<json>`, and its signed headers."""
    body = urlencode({"payload": json.dumps(payload)})
    return body, signed_headers(
        secret, body, content_type="application/x-www-form-urlencoded", **options
    )


_event_ids = itertools.count(1)
_event_clock = itertools.count(1)


def new_ts() -> str:
    """A fresh, unique Slack message timestamp."""
    return f"{int(time.time())}.{900_000 + next(_event_clock) % 100_000:06d}"


def event_callback(
    event: dict[str, Any],
    *,
    event_id: str | None = None,
    team_id: str = TEAM_ID,
    enterprise_id: str | None = None,
    bot_user_id: str = BOT_USER_ID,
) -> dict[str, Any]:
    """The `event_callback` envelope around one event (PROVIDERS §2.3 field names)."""
    return {
        "token": "verification-token-unused",
        "team_id": team_id,
        "enterprise_id": enterprise_id,
        "api_app_id": API_APP_ID,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": enterprise_id,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event": event,
    }


def message_event(
    *,
    channel: str,
    user: str | None,
    text: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    channel_type: str = "im",
    type: str = "message",
    **fields: Any,
) -> dict[str, Any]:
    """A `message` (or, with type="app_mention", an `app_mention`) event wrapped for delivery."""
    ts = ts or new_ts()
    event: dict[str, Any] = {
        "type": type,
        "channel": channel,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": channel_type,
        **fields,
    }
    if user is not None:
        event["user"] = user
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    # The envelope's team is the app's installation; `team` on the event is the sender's.
    return event_callback(event)


def mention(*, channel: str, user: str, text: str, **fields: Any) -> dict[str, Any]:
    """An `app_mention` of the bot in a channel, wrapped for delivery."""
    return message_event(
        channel=channel,
        user=user,
        text=f"<@{BOT_USER_ID}> {text}",
        type="app_mention",
        channel_type="channel",
        **fields,
    )


def block_action(
    action_id: str,
    value: str,
    *,
    user: str,
    channel: str,
    message_ts: str,
    team_id: str = TEAM_ID,
) -> dict[str, Any]:
    """A `block_actions` interactivity payload: one button pressed on a message."""
    action_ts = new_ts()
    return {
        "type": "block_actions",
        "team": {"id": team_id, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": team_id},
        "api_app_id": API_APP_ID,
        "token": "verification-token-unused",
        "trigger_id": f"trigger.{action_ts}",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "channel": {"id": channel, "name": "support-escalations"},
        "message": {"type": "message", "ts": message_ts, "text": "card", "user": BOT_USER_ID},
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "handoff_actions",
                "value": value,
                "action_ts": action_ts,
            }
        ],
    }
