"""REST: a JSON API for integrations and scripts, answered in the same HTTP request.

POST /api/messages publishes the message and waits (up to `pipeline.reply_timeout`) for its
turn result; GET /api/conversations/{id} returns the mode and transcript, which is also where
replies that come later (from an agent) can be read. Protected by `Authorization: Bearer
$GATEWAY_API_TOKEN` when that variable is set. An `Idempotency-Key` header makes a retried POST
safe: the same key is processed once.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.base import Adapter, Capabilities, register
from gateway.admission import ADMISSION_KEY
from gateway.message import Inbound, Outbound, TurnResult, conversation_key, new_id

CHANNEL = "rest"


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    conversation_id: str = Field(min_length=1, max_length=200, pattern=r"^[\w.:@+-]+$")
    text: str = Field(min_length=1)
    sender: str | None = Field(default=None, max_length=200)


@register(CHANNEL)
class RestAdapter(Adapter):
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
        limit = self.runtime.config.server.max_message_chars
        if len(payload.text) > limit:
            raise web.HTTPRequestEntityTooLarge(
                max_size=limit,
                actual_size=len(payload.text),
                text=f'{{"error": "text is {len(payload.text)} characters; the limit is {limit}"}}',
                content_type="application/json",
            )
        message = Inbound(
            channel=CHANNEL,
            conversation=conversation_key(CHANNEL, payload.conversation_id),
            sender=payload.sender or payload.conversation_id,
            text=payload.text,
            provider_message_id=request.headers.get("Idempotency-Key") or new_id(),
        )
        runtime = self.runtime
        admission = request.app[ADMISSION_KEY]
        with runtime.results.expect(message.id) as result:
            if not await admission.publish(message):
                raise admission.too_many_requests()
            try:
                turn = await asyncio.wait_for(result, runtime.config.pipeline.reply_timeout)
            except TimeoutError:
                return web.json_response(
                    {"conversation_id": payload.conversation_id, "status": "processing"},
                    status=202,
                )
        if turn.duplicate:
            return web.json_response(
                {
                    "error": "this Idempotency-Key was already processed; "
                    f"see GET /api/conversations/{payload.conversation_id}"
                },
                status=409,
            )
        return web.json_response(answer_body(payload.conversation_id, turn))

    async def _get_conversation(self, request: web.Request) -> web.Response:
        self._authorize(request)
        conversation_id = request.match_info["conversation_id"]
        key = conversation_key(CHANNEL, conversation_id)
        store = self.runtime.store
        conversation = await store.load(key)
        if conversation is None:
            raise web.HTTPNotFound(reason=f"no conversation {conversation_id!r}")
        transcript = await store.transcript(key)
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
        token = self.runtime.config.server.api_token
        if token is None:
            return
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPUnauthorized(
                reason="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
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
        "latency_ms": turn.latency_ms,
    }


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="send the body as application/json")
    try:
        return await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None


def _unprocessable(error: ValidationError) -> web.HTTPUnprocessableEntity:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'body'}: "
        f"{'unknown field' if item['type'] == 'extra_forbidden' else item['msg']}"
        for item in error.errors()
    )
    return web.HTTPUnprocessableEntity(reason=problems)
