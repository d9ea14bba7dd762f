"""Web chat: the page at `/` and its websocket at `/webchat/ws`.

The conversation id is a random 128-bit value the server issues and the browser keeps; it is
the only thing that grants access to a conversation, so it is never derived from anything
guessable. What the browser keeps is the id signed (`<id>.<HMAC>`), and only a resumed id whose
signature holds is resumed: any other gets a new conversation, so the server resumes only ids
it issued. The key is `GATEWAY_WEBCHAT_SECRET`; unset, a random one is created once in
`<data_dir>/webchat-secret`, which every web process sharing the data dir reads, so they agree
(web processes on several hosts must share the variable instead). Replies reach the socket
through a bus broadcast, so a reply produced by any worker (or, later, an agent) reaches the
web process that holds the customer's socket. A broadcast lost while the bus reconnected is
made good by sending each socket its history again (a `history` frame, which the page
redraws); the page's own reconnect gets it in `hello`.

The satisfaction ask is a `rating` frame (the question and its `ask_id`), drawn as five
buttons; a press sends `{"type": "rating", "ask_id": ..., "score": 1-5}`, published as a RATING
event, and the socket gets a `rated` frame, which disables the buttons.

A streamed answer is a `stream` frame (its first sentences, and a `stream_id`), `append`
frames, then the usual `reply` frame with the same `stream_id`: the page redraws the growing
bubble as the complete reply (which is also what a missed frame is made good by).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import re
from collections import defaultdict
from collections.abc import Mapping
from importlib import resources
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from pydantic import Field, SecretStr

from adapters.base import BaseChannel, ChannelToggle, parse_json
from adapters.signing import signing_key
from gateway.channel import Capabilities, ChannelContext, ReplyStream
from gateway.config import secret
from gateway.message import (
    TOOL_AUTHOR,
    Identity,
    IdentityKind,
    Inbound,
    Outbound,
    Rating,
    RatingAsk,
    TranscriptEntry,
    conversation_key,
    new_id,
    utcnow,
)
from gateway.topics import WEBCHAT, WebchatFrame

log = structlog.get_logger(__name__)

CHANNEL = "webchat"
SECRET_FILE = "webchat-secret"  # in the data dir, when GATEWAY_WEBCHAT_SECRET is unset
_CONVERSATION_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_CLIENT_ID = 100
_IDENTITY_PARAMS = {"email": IdentityKind.EMAIL, "user_id": IdentityKind.USER}
# A reply reaches the transcript just after its broadcast: the history is sent again this much
# later too, in case the first resend read the transcript in between.
RESYNC_SETTLE_SECONDS = 2.0


class WebchatConfig(ChannelToggle):
    title: str = "Support"
    secret: SecretStr | None = Field(default_factory=lambda: secret("GATEWAY_WEBCHAT_SECRET"))
    identity_secret: SecretStr | None = Field(
        default_factory=lambda: secret("GATEWAY_WEBCHAT_IDENTITY_SECRET"),
        description="the key the operator's site signs visitors' email or user id with",
    )


class WebchatChannel(BaseChannel[WebchatConfig]):
    name = CHANNEL
    capabilities = Capabilities(text_limit=None, typing=True, streaming=True)

    def __init__(self, config: WebchatConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        self._sockets: defaultdict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self._sending: set[asyncio.Task[None]] = set()
        self._page = _render_page(config.title)
        self._policy = _page_policy(self._page)
        self._key = signing_key(config.secret, context.data_dir / SECRET_FILE)
        context.subscribe(WEBCHAT, self._on_broadcast)
        context.on_resync(self._resend_histories)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self._index), web.get("/webchat/ws", self._websocket)]

    async def send(self, outbound: Outbound) -> None:
        await self._frame(outbound.conversation, _reply_frame(outbound))

    async def stream(self, outbound: Outbound) -> ReplyStream:
        stream = WebchatStream(self, outbound.conversation)
        await stream.open(outbound)
        return stream

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream:
        # The reply frame with the same id redraws the bubble a dead worker left growing.
        return WebchatStream(self, outbound.conversation, handle["stream_id"])

    async def ask_rating(self, ask: RatingAsk) -> None:
        frame = {**_reply_frame(ask.reply), "type": "rating", "ask_id": ask.id}
        await self._frame(ask.reply.conversation, frame)

    async def _frame(self, conversation: str, frame: dict[str, Any]) -> None:
        await self.context.broadcast(WEBCHAT, WebchatFrame(conversation=conversation, frame=frame))

    async def typing(self, conversation: str) -> None:
        await self.context.broadcast(
            WEBCHAT, WebchatFrame(conversation=conversation, frame={"type": "typing"})
        )

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(
            text=self._page,
            content_type="text/html",
            headers={"Content-Security-Policy": self._policy},
        )

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        identity = self._verified_identity(request.query)
        socket = web.WebSocketResponse(heartbeat=30, max_msg_size=64 * 1024)
        await socket.prepare(request)
        conversation_id = self._issued(request.query.get("conversation", "")) or new_id()
        key = conversation_key(CHANNEL, conversation_id)
        history = await self.context.transcript(key)
        await socket.send_json(
            {
                "type": "hello",
                "conversation_id": f"{conversation_id}.{self._signature(conversation_id)}",
                "history": _history(history),
            }
        )
        self._sockets[key].add(socket)
        try:
            async for frame in socket:
                if frame.type is WSMsgType.TEXT:
                    await self._on_frame(socket, key, conversation_id, frame.data, identity)
        finally:
            self._sockets[key].discard(socket)
            if not self._sockets[key]:
                del self._sockets[key]
        return socket

    async def _on_frame(
        self,
        socket: web.WebSocketResponse,
        key: str,
        conversation_id: str,
        data: str,
        identity: Identity | None,
    ) -> None:
        try:
            frame = parse_json(data)
        except ValueError:
            await socket.send_json({"type": "error", "message": "frames must be JSON"})
            return
        if isinstance(frame, dict) and frame.get("type") == "rating":
            await self._on_rating(socket, key, conversation_id, frame)
            return
        try:
            text, client_id = _parse_frame(frame, self.context.limits.max_message_chars)
        except ValueError as problem:
            # The page marks the message it names as not delivered, instead of retrying it.
            error = {"type": "error", "message": str(problem)}
            if isinstance(frame, dict) and isinstance(frame.get("client_id"), str):
                error["client_id"] = frame["client_id"]
            await socket.send_json(error)
            return
        message = Inbound(
            channel=CHANNEL,
            conversation=key,
            sender=f"webchat:{conversation_id}",
            text=text,
            provider_message_id=client_id,
            identity=identity,
        )
        retry_after = self.context.limits.retry_after
        if not await self.context.admit(message):
            await socket.send_json(
                {
                    "type": "error",
                    "client_id": client_id,
                    "message": "We're very busy right now: please send it again "
                    f"in {retry_after} s.",
                    "retry_after": retry_after,
                }
            )
            return
        await socket.send_json({"type": "ack", "client_id": client_id})

    async def _on_rating(
        self, socket: web.WebSocketResponse, key: str, conversation_id: str, frame: dict[str, Any]
    ) -> None:
        """A press of a satisfaction button; the pipeline checks the ask is this conversation's
        open one, and records the first answer only (a double click is one rating)."""
        try:
            rating = Rating.model_validate(
                {"ask": frame.get("ask_id"), "score": frame.get("score")}
            )
        except ValueError:
            await socket.send_json({"type": "error", "message": "not a rating of 1 to 5"})
            return
        await self.context.publish(rating.event(CHANNEL, key, f"webchat:{conversation_id}"))
        await socket.send_json({"type": "rated", "ask_id": rating.ask, "score": rating.score})

    async def _resend_histories(self) -> None:
        """Broadcasts may have been missed: every socket here gets its conversation again."""
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(RESYNC_SETTLE_SECONDS)
            for key, sockets in list(self._sockets.items()):
                transcript = await self.context.transcript(key)
                history = _history(transcript)
                for socket in list(sockets):
                    if not socket.closed:
                        await _send_frame(socket, {"type": "history", "history": history})

    def _verified_identity(self, query: Mapping[str, str]) -> Identity | None:
        """The visitor the operator's site signed: `email` or `user_id`, with `user_hash` the
        hex HMAC-SHA256 of it under `identity_secret` (as Intercom's identity verification).
        A claimed identity that is not signed right is refused (403), never used unsigned."""
        claims = [(kind, query[name]) for name, kind in _IDENTITY_PARAMS.items() if query.get(name)]
        if not claims and "user_hash" not in query:
            return None
        key = self.config.identity_secret
        if key is None or len(claims) != 1:
            log.info("webchat.identity_refused", why="not configured" if key is None else "shape")
            raise web.HTTPForbidden(reason="identity verification failed")
        kind, value = claims[0]
        expected = hmac.new(key.get_secret_value().encode(), value.encode(), hashlib.sha256)
        if not hmac.compare_digest(query.get("user_hash", "").lower(), expected.hexdigest()):
            log.info("webchat.identity_refused", why="bad signature")
            raise web.HTTPForbidden(reason="identity verification failed")
        return Identity(kind=kind, value=value)

    def _signature(self, conversation_id: str) -> str:
        return hmac.new(self._key, conversation_id.encode(), hashlib.sha256).hexdigest()[:32]

    def _issued(self, token: str) -> str | None:
        """The conversation id of a signed id this deployment handed out, else None."""
        conversation_id, _, signature = token.partition(".")
        if not _CONVERSATION_ID.match(conversation_id):
            return None
        if not hmac.compare_digest(signature.encode(), self._signature(conversation_id).encode()):
            log.info("webchat.unsigned_id_replaced")
            return None
        return conversation_id

    def _on_broadcast(self, payload: WebchatFrame) -> None:
        for socket in list(self._sockets.get(payload.conversation, ())):
            if not socket.closed:
                task = asyncio.create_task(_send_frame(socket, payload.frame))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)


class WebchatStream:
    """A growing bot bubble: `stream`, then `append` frames, ended by its `reply` frame."""

    def __init__(
        self, channel: WebchatChannel, conversation: str, stream_id: str | None = None
    ) -> None:
        self._channel = channel
        self._conversation = conversation
        self._id = stream_id or new_id()

    @property
    def handle(self) -> dict[str, str]:
        return {"stream_id": self._id}

    async def open(self, outbound: Outbound) -> None:
        frame = {**_reply_frame(outbound), "type": "stream", "stream_id": self._id}
        await self._channel._frame(self._conversation, frame)

    async def append(self, text: str) -> None:
        frame = {"type": "append", "stream_id": self._id, "text": text}
        await self._channel._frame(self._conversation, frame)

    async def finish(self, reply: Outbound) -> None:
        frame = {**_reply_frame(reply), "stream_id": self._id}
        await self._channel._frame(self._conversation, frame)

    replace = finish  # the reply frame redraws the bubble whole either way


def _reply_frame(outbound: Outbound) -> dict[str, Any]:
    return {
        "type": "reply",
        "role": outbound.role.value,
        "text": outbound.text,
        "author": outbound.author,
        "at": utcnow().isoformat(),
        "sources": [source.model_dump() for source in outbound.sources],
    }


def _parse_frame(frame: Any, max_chars: int) -> tuple[str, str]:
    if not isinstance(frame, dict) or frame.get("type") != "message":
        raise ValueError('expected {"type": "message", "text": ..., "client_id": ...}')
    text, client_id = frame.get("text"), frame.get("client_id")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the message is empty")
    if len(text) > max_chars:
        raise ValueError(f"the message is {len(text)} characters; the limit is {max_chars}")
    if not isinstance(client_id, str) or not 0 < len(client_id) <= _MAX_CLIENT_ID:
        raise ValueError("client_id must be a non-empty string of at most 100 characters")
    return text.strip(), client_id


def _history(transcript: list[TranscriptEntry]) -> list[dict[str, Any]]:
    """What the page redraws: the conversation, without the records of tool calls."""
    return [_history_item(entry) for entry in transcript if entry.author != TOOL_AUTHOR]


def _history_item(entry: TranscriptEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json", include={"role", "text", "author", "at", "sources"})


def _page_policy(page: str) -> str:
    """The page's Content-Security-Policy: its own inline script and style, allowed by hash
    (https://www.w3.org/TR/CSP3/#external-hash), its websocket, and nothing else."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        digests = (hashlib.sha256(body.encode()).digest() for body in bodies)
        return " ".join(f"'sha256-{base64.b64encode(digest).decode()}'" for digest in digests)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _render_page(title: str) -> str:
    page = resources.files("adapters").joinpath("static/webchat.html").read_text(encoding="utf-8")
    return page.replace("{{title}}", html.escape(title, quote=True))


async def _send_frame(socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
    try:
        await socket.send_json(frame)
    except ConnectionError:
        # The browser went away; it reloads the history when it reconnects.
        log.debug("webchat.socket_gone")
