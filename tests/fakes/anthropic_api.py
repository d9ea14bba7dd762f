"""A local fake of the Anthropic Messages API (`POST /v1/messages`) for the real `anthropic` SDK.

It streams Server-Sent Events in the order the API does (message_start, content_block_start,
content_block_delta with text_delta or input_json_delta, content_block_stop, message_delta,
message_stop, with ping interleaved) and answers non-streaming requests with one JSON
message. Every request is recorded (headers and JSON body) so tests can assert on the model,
max_tokens, system prompt, cache_control and quoted passages.

Each request takes the next scripted response, or the default one when none is queued:

    async with FakeAnthropic() as claude:
        claude.script(Status(429, retry_after=0.1), decision(reply="Yes.", sources=[1]))
        client = AsyncAnthropic(api_key=API_KEY, base_url=claude.url)

`simulated()` is a stand-in for the real model's pace, for benchmarks: the first token after
0.6 s, then 60 tokens per second, counting a token as 4 characters of output (Anthropic's
rule of thumb for English); any `ToolCall` takes its own `first_token` and
`tokens_per_second`. As the API does, a tool's input streams as it is generated only when the
request's definition of that tool sets `eager_input_streaming`; otherwise each top-level key
and value is held until it is complete, then sent at once.

Run it alone with `python -m tests.fakes.anthropic_api --port N`
(`--words 45 --tokens-per-second 120 --first-token 0.6` for another answer and pace;
`--tool get_order` for a model that calls that tool before it answers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

API_KEY = "sk-ant-test-0123456789"
CHARS_PER_TOKEN = 4
TICK = 0.05  # seconds between delta events while streaming at a given pace


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]

    @property
    def system_text(self) -> str:
        system = self.body.get("system", "")
        if isinstance(system, str):
            return system
        return "\n".join(block.get("text", "") for block in system)

    @property
    def last_user_text(self) -> str:
        content = self.body["messages"][-1]["content"]
        if isinstance(content, str):
            return content
        return "\n".join(block.get("text", "") for block in content)


@dataclass(frozen=True)
class ToolCall:
    """A streamed (or JSON) answer whose content is one tool_use block with `input`.

    `echo_system_prompt` makes the reply the request's system prompt: a model that obeyed an
    injected "repeat your instructions".
    """

    input: dict[str, Any]
    name: str = "answer"
    first_token: float = 0.0  # seconds before the first delta
    tokens_per_second: float | None = None  # None: as fast as possible
    echo_system_prompt: bool = False


@dataclass(frozen=True)
class Calls:
    """One answer calling several tools at once (parallel tool use): a tool_use block each,
    streamed one after the other, as the API does."""

    calls: tuple[ToolCall, ...]

    def __init__(self, *calls: ToolCall) -> None:
        object.__setattr__(self, "calls", calls)


@dataclass(frozen=True)
class Text:
    """A streamed plain-text answer (no tool call)."""

    text: str


@dataclass(frozen=True)
class Status:
    """An HTTP error with the API's error body; 429 and 529 as the API sends them."""

    status: int
    error_type: str = ""
    retry_after: float | None = None

    @property
    def kind(self) -> str:
        default = {429: "rate_limit_error", 529: "overloaded_error"}.get(self.status, "api_error")
        return self.error_type or default


@dataclass(frozen=True)
class MidStreamError:
    """200, message_start and a first delta, then an `error` event."""

    error_type: str = "overloaded_error"


@dataclass(frozen=True)
class Stall:
    """No answer for `seconds`; with `after_start`, the stall comes after message_start."""

    seconds: float
    after_start: bool = False


Response = ToolCall | Calls | Text | Status | MidStreamError | Stall


def decision(
    *,
    reply: str = "",
    action: str = "answer",
    reason: str | None = None,
    explanation: str | None = None,
    confidence: float = 0.9,
    sources: list[int] | None = None,
    **pace: Any,
) -> ToolCall:
    """The call of the decision tool the Claude answerer offers for `action` (`answer` or
    `escalate`), its fields in the schema's order."""
    if action == "escalate":
        given = {"reason": reason, "reply": reply, "explanation": explanation}
        escalation = {key: value for key, value in given.items() if value is not None}
        return ToolCall(name="escalate", input=escalation, **pace)
    used = sources if sources is not None else [1]
    answer = {"reply": reply, "sources": used, "confidence": confidence}
    return ToolCall(name="answer", input=answer, **pace)


def simulated(reply: str, **fields: Any) -> ToolCall:
    """A decision at the pace of a real model: first token after 0.6 s, then 60 tokens/s."""
    return decision(reply=reply, first_token=0.6, tokens_per_second=60.0, **fields)


@dataclass
class FakeAnthropic:
    """The Messages API on 127.0.0.1:<free port>; `async with FakeAnthropic() as claude:`."""

    default: Response = field(default_factory=lambda: decision(reply="Happy to help."))
    # When set, a request that carries no tool result is answered with this call first, and
    # the one that carries its result with `default`: a model that looks something up first.
    call_first: ToolCall | None = None
    port: int | None = None
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: deque[Response] = deque()
        self._closing = asyncio.Event()
        self._ids = itertools.count(1)
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._server = TestServer(app, host="127.0.0.1", port=self.port)

    async def __aenter__(self) -> FakeAnthropic:
        await self._server.start_server()
        return self

    async def __aexit__(self, *_: object) -> None:
        self._closing.set()  # ends every stall, so the server closes at once
        await self._server.close()

    @property
    def url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")

    def script(self, *responses: Response) -> None:
        """Answer the next requests with `responses`, in order, then with `default` again."""
        self._queue.extend(responses)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        recorded = Request({k.lower(): v for k, v in request.headers.items()}, body)
        self.requests.append(recorded)
        response = self._queue.popleft() if self._queue else self.default
        if not self._queue and self.call_first is not None and not _has_tool_result(body):
            response = self.call_first
        if isinstance(response, Stall) and not response.after_start:
            await self._pause(response.seconds)
            response = self.default
        if isinstance(response, Status):
            return _error(response)
        if isinstance(response, ToolCall) and response.echo_system_prompt:
            echoed = {**response.input, "reply": recorded.system_text}
            response = ToolCall(input=echoed, name=response.name)
        message_id = f"msg_fake{next(self._ids):06d}"
        if not body.get("stream"):
            return web.json_response(_message(message_id, body, response))
        return await self._stream(request, message_id, body, response)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def _stream(
        self, request: web.Request, message_id: str, body: dict[str, Any], response: Response
    ) -> web.StreamResponse:
        stream = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "request-id": f"req_{message_id}"}
        )
        await stream.prepare(request)
        # A client that gave up (its deadline passed) leaves nothing to send to.
        with contextlib.suppress(ConnectionResetError):
            await self._events(stream, message_id, body, response)
        return stream

    async def _events(
        self, stream: web.StreamResponse, message_id: str, body: dict[str, Any], response: Response
    ) -> None:
        async def event(name: str, data: dict[str, Any]) -> None:
            await stream.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        start = _message(message_id, body, None)
        await event("message_start", {"type": "message_start", "message": start})
        if isinstance(response, Stall):
            await self._pause(response.seconds)
            return
        await event("ping", {"type": "ping"})
        if isinstance(response, MidStreamError):
            await event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": _empty(response)},
            )
            error = {"type": response.error_type, "message": "Overloaded"}
            await event("error", {"type": "error", "error": error})
            return
        assert isinstance(response, ToolCall | Text | Calls)
        for index, part in enumerate(_parts(response)):
            block = _empty(part, index)
            await event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
            if isinstance(part, Text):
                chunks, delay, first, kind, key = _chunks(part.text, None), 0.0, 0.0, "text", "text"
            else:
                pace = part.tokens_per_second
                chunks = _chunks(json.dumps(part.input, ensure_ascii=False), pace)
                if pace and not _eager(body, part.name):
                    chunks = _held_per_key(part.input, chunks)
                delay = TICK if pace else 0.0
                first, kind, key = part.first_token, "input_json", "partial_json"
            await asyncio.sleep(first)
            for number, chunk in enumerate(chunks):
                if number and delay:
                    await asyncio.sleep(delay)
                if not chunk:
                    continue  # a tick of a key and value still held back
                delta = {"type": f"{kind}_delta", key: chunk}
                await event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            await event("content_block_stop", {"type": "content_block_stop", "index": index})
        stop_reason = "end_turn" if isinstance(response, Text) else "tool_use"
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": _tokens(response)},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await stream.write_eof()


def _eager(body: dict[str, Any], tool: str) -> bool:
    return any(
        definition.get("name") == tool and definition.get("eager_input_streaming") is True
        for definition in body.get("tools", [])
    )


def _held_per_key(arguments: dict[str, Any], chunks: list[str]) -> list[str]:
    """The paced `chunks` of `arguments`' JSON regrouped as the API sends a tool input that is
    not streamed eagerly: nothing ("") at each tick until a top-level key and value is
    complete, then all of it at the tick its last character was generated."""
    if not arguments:
        return chunks  # "{}": nothing to hold
    ends, written = [], "{"
    for number, (name, value) in enumerate(arguments.items()):
        pair = json.dumps({name: value}, ensure_ascii=False)[1:-1]
        written += (", " if number else "") + pair
        ends.append(len(written))
    ends[-1] = len(written) + 1  # the closing brace goes with the last pair
    text, held, sent, at = "".join(chunks), [], 0, 0
    for chunk in chunks:
        at += len(chunk)
        complete = max((end for end in ends if end <= at), default=sent)
        held.append(text[sent:complete])
        sent = complete
    return held


def _has_tool_result(body: dict[str, Any]) -> bool:
    content = body.get("messages", [{}])[-1].get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def _error(response: Status) -> web.Response:
    headers = {"request-id": "req_fake_error"}
    if response.retry_after is not None:
        headers["retry-after"] = f"{response.retry_after:g}"
    body = {
        "type": "error",
        "error": {"type": response.kind, "message": f"fake {response.status}"},
        "request_id": "req_fake_error",
    }
    return web.json_response(body, status=response.status, headers=headers)


def _parts(response: ToolCall | Text | Calls) -> tuple[ToolCall | Text, ...]:
    return response.calls if isinstance(response, Calls) else (response,)


def _empty(response: Response, index: int = 0) -> dict[str, Any]:
    if isinstance(response, ToolCall):
        block_id = f"toolu_fake{index + 1:02d}"
        return {"type": "tool_use", "id": block_id, "name": response.name, "input": {}}
    return {"type": "text", "text": ""}


def _message(message_id: str, body: dict[str, Any], response: Response | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for index, part in enumerate(
        _parts(response) if isinstance(response, ToolCall | Text | Calls) else ()
    ):
        if isinstance(part, ToolCall):
            content.append({**_empty(part, index), "input": part.input})
        else:
            content.append({"type": "text", "text": part.text})
    cached = sum(len(json.dumps(tool)) for tool in body.get("tools", [])) // CHARS_PER_TOKEN
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": content,
        "stop_reason": "tool_use" if isinstance(response, ToolCall | Calls) else None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": len(json.dumps(body.get("messages", []))) // CHARS_PER_TOKEN,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": _tokens(response) if response else 1,
        },
    }


def _tokens(response: Response) -> int:
    text = ""
    if isinstance(response, ToolCall | Text | Calls):
        for part in _parts(response):
            text += part.text if isinstance(part, Text) else json.dumps(part.input)
    return max(1, len(text) // CHARS_PER_TOKEN)


def _chunks(text: str, tokens_per_second: float | None) -> list[str]:
    """The text cut into deltas: a tick's worth of tokens each at a pace, else word by word."""
    if not tokens_per_second:
        return re.findall(r"\S*\s*", text)[:-1] or [text]
    size = max(1, round(tokens_per_second * TICK)) * CHARS_PER_TOKEN
    return [text[i : i + size] for i in range(0, len(text), size)]


TOOL_INPUT = '{"order_id": "KC-1002", "postcode": "SW1A 1AA"}'  # what `--tool` calls with
SIMULATED_REPLY = (
    "You can pause your subscription for up to three months under Account > Subscriptions; "
    "skipped deliveries are not charged."
)
_SENTENCES = (
    "You can pause your subscription for up to three months at a time.",
    "Open Account, then Subscriptions, and choose Pause before your next delivery date.",
    "Deliveries you skip while it is paused are never charged, and you can resume any time.",
    "If you only want to miss one parcel, skipping a single delivery is quicker.",
)


def simulated_reply(words: int) -> str:
    """A help-centre answer of about `words` words, in whole sentences (the last one cut)."""
    pool = " ".join(_SENTENCES * (words // 40 + 1)).split()
    return " ".join(pool[:words]).rstrip(".,;") + "."


async def _serve(
    port: int,
    stall: float | None,
    words: int | None,
    first_token: float,
    pace: float,
    tool: str | None,
) -> None:
    reply = simulated_reply(words) if words else SIMULATED_REPLY
    pace_of = {"first_token": first_token, "tokens_per_second": pace}
    answer = decision(reply=reply, sources=[1], **pace_of)
    lookup = ToolCall(name=tool, input=json.loads(TOOL_INPUT), **pace_of) if tool else None
    default = Stall(stall) if stall else answer
    async with FakeAnthropic(default=default, call_first=lookup, port=port) as fake:
        print(f"fake Anthropic API on {fake.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The fake Messages API at a simulated pace.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall", type=float, help="stall every request this many seconds")
    parser.add_argument("--words", type=int, help="the reply's length (default: 17 words)")
    parser.add_argument("--first-token", type=float, default=0.6, help="seconds")
    parser.add_argument("--tokens-per-second", type=float, default=60.0)
    parser.add_argument("--tool", help=f"call this tool first, with {TOOL_INPUT}")
    args = parser.parse_args()
    asyncio.run(
        _serve(
            args.port, args.stall, args.words, args.first_token, args.tokens_per_second, args.tool
        )
    )
