"""REST: a JSON API for integrations and scripts, answered in the same HTTP request.

POST /api/messages publishes the message and waits (up to `pipeline.reply_timeout`) for its
turn result; GET /api/conversations/{id} returns the mode and transcript, which is also where
replies that come later (from an agent) can be read. Protected by `Authorization: Bearer
$GATEWAY_API_TOKEN` when that variable is set. An `Idempotency-Key` header makes a retried POST
safe: the same key is processed once, and a retry gets the first attempt's response (status and
body, with `Idempotent-Replayed: true`) for the dedupe TTL, waiting for it while the first is
still being processed; a web process that died mid-request does not change that. A message the
bus lost before any worker took it (Redis restarted without persistence) is answered 503 with
Retry-After within seconds: it was never processed, so sending it again is safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.base import BaseChannel, ChannelToggle, parse_json
from gateway.channel import Capabilities
from gateway.message import Identity, Inbound, Outbound, TurnResult, conversation_key, new_id
from gateway.results import MessageLost

CHANNEL = "rest"


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    conversation_id: str = Field(min_length=1, max_length=200, pattern=r"^[\w.:@+-]+$")
    text: str = Field(min_length=1)
    sender: str | None = Field(default=None, max_length=200)
    # Who the operator's own system verified the customer to be; trusted only from a caller
    # that proved itself with GATEWAY_API_TOKEN.
    identity: Identity | None = None


class RestChannel(BaseChannel[ChannelToggle]):
    name = CHANNEL
    capabilities = Capabilities(text_limit=None)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/messages", self._post_message),
            web.get("/api/conversations/{conversation_id}", self._get_conversation),
        ]

    async def send(self, outbound: Outbound) -> None:
        """Nothing to push: REST is pull-based, the reply is in the POST response and transcript."""

    async def _post_message(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await _json_body(request)
        try:
            payload = MessageRequest.model_validate(body)
        except ValidationError as exc:
            raise _unprocessable(exc) from None
        limit = self.context.limits.max_message_chars
        if len(payload.text) > limit:
            raise web.HTTPRequestEntityTooLarge(
                max_size=limit,
                actual_size=len(payload.text),
                text=f'{{"error": "text is {len(payload.text)} characters; the limit is {limit}"}}',
                content_type="application/json",
            )
        if payload.identity is not None and self.context.limits.api_token is None:
            raise web.HTTPUnprocessableEntity(
                text='{"error": "identity: only accepted when GATEWAY_API_TOKEN is set"}',
                content_type="application/json",
            )
        idempotency_key = request.headers.get("Idempotency-Key")
        conversation = conversation_key(CHANNEL, payload.conversation_id)
        message = Inbound(
            id=_message_id(conversation, idempotency_key) if idempotency_key else new_id(),
            channel=CHANNEL,
            conversation=conversation,
            sender=payload.sender or payload.conversation_id,
            text=payload.text,
            provider_message_id=idempotency_key or new_id(),
            identity=payload.identity,
        )
        context = self.context
        if idempotency_key and (saved := await context.saved_response(message.dedupe_key)):
            return _replay(saved, payload.conversation_id)
        with context.await_result(message.id) as result:
            if not await context.admit(message):
                raise _too_many_requests(context.limits.retry_after)
            try:
                # Shielded: a retry in flight at the same time waits on the same future.
                turn = await asyncio.wait_for(asyncio.shield(result), context.limits.reply_timeout)
            except TimeoutError:
                return web.json_response(
                    {"conversation_id": payload.conversation_id, "status": "processing"},
                    status=202,
                )
            except MessageLost:  # never processed: sending it again is safe
                return web.json_response(
                    {"error": "the message was lost before it was processed; send it again"},
                    status=503,
                    headers={"Retry-After": str(context.limits.retry_after)},
                )
        if turn.duplicate:  # processed, but its response is no longer known
            return web.json_response(
                {
                    "error": "this Idempotency-Key was already processed; "
                    f"see GET /api/conversations/{payload.conversation_id}"
                },
                status=409,
            )
        body = answer_body(payload.conversation_id, turn)
        if idempotency_key:
            saved = json.dumps({"status": 200, "body": body})
            await context.save_response(message.dedupe_key, saved)
        return web.json_response(body)

    async def _get_conversation(self, request: web.Request) -> web.Response:
        self._authorize(request)
        conversation_id = request.match_info["conversation_id"]
        key = conversation_key(CHANNEL, conversation_id)
        conversation = await self.context.conversation(key)
        if conversation is None:
            raise web.HTTPNotFound(reason=f"no conversation {conversation_id!r}")
        transcript = await self.context.transcript(key)
        return web.json_response(
            {
                "conversation_id": conversation_id,
                "mode": conversation.mode.value,
                "transcript": [
                    entry.model_dump(mode="json", exclude={"message_id", "in_reply_to"})
                    for entry in transcript
                ],
            }
        )

    def _authorize(self, request: web.Request) -> None:
        token = self.context.limits.api_token
        if token is None:
            return
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPUnauthorized(
                reason="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )


def _message_id(conversation: str, idempotency_key: str) -> str:
    """The same for every attempt with this key in this conversation, so that a retry (on any
    web process) can be answered with the first attempt's turn result."""
    return hashlib.sha256(f"{conversation}\n{idempotency_key}".encode()).hexdigest()[:32]


def _replay(saved: str, conversation_id: str) -> web.Response:
    response = json.loads(saved)
    if response["body"].get("conversation_id") != conversation_id:
        raise web.HTTPUnprocessableEntity(
            reason="this Idempotency-Key was already used for another conversation"
        )
    return web.json_response(
        response["body"], status=response["status"], headers={"Idempotent-Replayed": "true"}
    )


def answer_body(conversation_id: str, turn: TurnResult) -> dict[str, Any]:
    """The REST answer; `gateway ask --json` prints the same shape."""
    decision = turn.decision
    return {
        "conversation_id": conversation_id,
        "replies": [{"text": text} for text in turn.replies],
        "decision": {
            "action": decision.action.value,
            "reason": decision.reason.value if decision.reason else None,
            "explanation": decision.explanation,
            "confidence": round(decision.confidence, 4),
            "sources": [source.model_dump() for source in decision.sources],
        },
        # Receipt to the first text of the turn (a holding line, or the reply), and to the reply.
        "first_response_ms": turn.first_response_ms,
        "latency_ms": turn.latency_ms,
    }


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="send the body as application/json")
    try:
        return parse_json(await request.read())
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None


def _too_many_requests(retry_after: int) -> web.HTTPTooManyRequests:
    return web.HTTPTooManyRequests(
        reason="The gateway is at capacity; retry after the Retry-After seconds.",
        headers={"Retry-After": str(retry_after)},
    )


def _unprocessable(error: ValidationError) -> web.HTTPUnprocessableEntity:
    """The problems in the JSON body: they name the client's own keys, which may hold any
    character, and an HTTP reason phrase may not (a newline in one is a 500)."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'body'}: "
        f"{'unknown field' if item['type'] == 'extra_forbidden' else item['msg']}"
        for item in error.errors()
    )
    return web.HTTPUnprocessableEntity(
        text=json.dumps({"error": problems}), content_type="application/json"
    )
