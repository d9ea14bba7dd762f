"""Web chat: the page at `/` and its websocket at `/webchat/ws`.

The conversation id is a random 128-bit value the server issues and the browser keeps; it is
the only thing that grants access to a conversation, so it is never derived from anything
guessable. Replies reach the socket through a bus broadcast, so a reply produced by any worker
(or, later, an agent) reaches the web process that holds the customer's socket.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections import defaultdict
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSMsgType, web

from adapters.base import Adapter, Capabilities, register
from gateway.admission import ADMISSION_KEY, Admission
from gateway.message import (
    Inbound,
    Outbound,
    TranscriptEntry,
    conversation_key,
    new_id,
    utcnow,
)

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

CHANNEL = "webchat"
TOPIC = "webchat"
_CONVERSATION_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_CLIENT_ID = 100


@register(CHANNEL)
class WebchatAdapter(Adapter):
    capabilities = Capabilities(text_limit=None, typing=True)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self._sockets: defaultdict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self._sending: set[asyncio.Task[None]] = set()
        self._page = _render_page(runtime.config.channels.webchat.title)
        runtime.bus.subscribe(TOPIC, self._on_broadcast)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self._index), web.get("/webchat/ws", self._websocket)]

    async def send(self, outbound: Outbound) -> None:
        frame = {
            "type": "reply",
            "role": outbound.role,
            "text": outbound.text,
            "author": outbound.author,
            "at": utcnow().isoformat(),
            "sources": [source.model_dump() for source in outbound.sources],
        }
        await self.runtime.bus.broadcast(
            TOPIC, {"conversation": outbound.conversation, "frame": frame}
        )

    async def typing(self, conversation: str) -> None:
        await self.runtime.bus.broadcast(
            TOPIC, {"conversation": conversation, "frame": {"type": "typing"}}
        )

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(text=self._page, content_type="text/html")

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=30, max_msg_size=64 * 1024)
        await socket.prepare(request)
        requested = request.query.get("conversation", "")
        conversation_id = requested if _CONVERSATION_ID.match(requested) else new_id()
        key = conversation_key(CHANNEL, conversation_id)
        history = await self.runtime.store.transcript(key)
        await socket.send_json(
            {
                "type": "hello",
                "conversation_id": conversation_id,
                "history": [_history_item(entry) for entry in history],
            }
        )
        self._sockets[key].add(socket)
        try:
            async for frame in socket:
                if frame.type is WSMsgType.TEXT:
                    await self._on_frame(
                        socket, key, conversation_id, frame.data, request.app[ADMISSION_KEY]
                    )
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
        admission: Admission,
    ) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            await socket.send_json({"type": "error", "message": "frames must be JSON"})
            return
        try:
            text, client_id = _parse_frame(frame, self.runtime.config.server.max_message_chars)
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
        )
        if not await admission.publish(message):
            await socket.send_json(
                {
                    "type": "error",
                    "client_id": client_id,
                    "message": "We're very busy right now: please send it again "
                    f"in {admission.retry_after} s.",
                    "retry_after": admission.retry_after,
                }
            )
            return
        await socket.send_json({"type": "ack", "client_id": client_id})

    def _on_broadcast(self, payload: dict[str, Any]) -> None:
        for socket in list(self._sockets.get(payload["conversation"], ())):
            if not socket.closed:
                task = asyncio.create_task(_send_frame(socket, payload["frame"]))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)


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


def _history_item(entry: TranscriptEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json", include={"role", "text", "author", "at", "sources"})


def _render_page(title: str) -> str:
    page = resources.files("adapters").joinpath("static/webchat.html").read_text(encoding="utf-8")
    return page.replace("{{title}}", html.escape(title, quote=True))


async def _send_frame(socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
    try:
        await socket.send_json(frame)
    except ConnectionError:
        # The browser went away; it reloads the history when it reconnects.
        log.debug("webchat.socket_gone")
