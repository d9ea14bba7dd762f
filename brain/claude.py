"""The Claude answerer: a grounded answer, streamed to the customer as it is written, and a
structured decision.

Claude is asked once per message, streaming, with the decision tool forced, so the answer
and the decision (answer | escalate, confidence, reply, sources, reason, explanation) come
back as the tool's validated input, never as prose to search for a magic word. The tool input
is read as it streams: once its action and confidence say it is a confident answer, the reply
grows in the pipeline's draft while the model writes it, and the customer sees its first
sentence long before the call ends (`gateway/streaming.py`).

The model has until the answer deadline from the message's receipt (`brain.answer_deadline`,
less `brain.reserve` to fall back and send); the pipeline says a holding line if no sentence is
out by the first-response deadline (`brain.deadline`). The SDK's own retries are off: it sleeps
whatever `retry-after` says, however long. Ours retry a transient failure (429, 5xx, 529,
connection loss, an `error` event mid-stream) only while the wait plus `brain.retry_min_time`
still fits the deadline. When the model cannot answer in time, the offline answerer answers if
it is confident; otherwise the customer gets a short holding reply and the conversation
escalates with `model_unavailable`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jiter
import structlog
from anthropic import APIConnectionError, APIError, APIStatusError, AsyncAnthropic
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from brain.answerer import GroundedAnswerer, deadline_of, sources_of
from brain.config import BrainConfig
from brain.escalation import escalate
from brain.knowledge import KnowledgeBase
from brain.offline import OfflineAnswerer
from brain.prompt import (
    DECISION_TOOL,
    DECISION_TOOL_NAME,
    SYSTEM_BLOCKS,
    ModelDecision,
    messages_for,
)
from gateway.answering import Draft, Passage
from gateway.message import Action, Decision, Inbound, Reason, TranscriptEntry

log = structlog.get_logger(__name__)

_REASONS = {
    "human_requested": Reason.HUMAN_REQUESTED,
    "negative_sentiment": Reason.NEGATIVE_SENTIMENT,
    "policy_restricted": Reason.POLICY_RESTRICTED,
    "account_action": Reason.ACCOUNT_ACTION,
    "low_confidence": Reason.LOW_CONFIDENCE,
}
_BACKOFF = wait_exponential_jitter(multiplier=0.1, max=0.5, jitter=0.1)


class IncompleteDecision(ValueError):
    """The stream ended without a complete decision tool call (cut at max_tokens, no call)."""


class ClaudeAnswerer(GroundedAnswerer):
    def __init__(self, knowledge: KnowledgeBase, config: BrainConfig) -> None:
        super().__init__(knowledge, config)
        if config.anthropic_api_key is None:
            raise ValueError("brain.anthropic_api_key is required (set ANTHROPIC_API_KEY)")
        self._offline = OfflineAnswerer(knowledge, config)
        self._client = AsyncAnthropic(
            api_key=config.anthropic_api_key.get_secret_value(),
            base_url=config.anthropic_base_url,
            max_retries=0,  # retried below, within the deadline
            timeout=config.answer_time,
        )

    async def close(self) -> None:
        await self._client.close()

    async def answer(
        self,
        message: Inbound,
        history: list[TranscriptEntry],
        passages: list[Passage],
        draft: Draft | None = None,
    ) -> Decision:
        deadline = deadline_of(message, self._config, self._config.answer_time)
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=_wait,
            stop=stop_after_attempt(self._config.max_attempts) | self._out_of_time(deadline),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async with asyncio.timeout_at(deadline):
                return await retrying(self._ask, message, history, passages, deadline, draft)
        except (TimeoutError, APIError, ValueError) as error:
            return await self._fall_back(message, history, passages, _describe(error))

    async def _ask(
        self,
        message: Inbound,
        history: list[TranscriptEntry],
        passages: list[Passage],
        deadline: float,
        draft: Draft | None,
    ) -> Decision:
        config = self._config
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.01)
        stream = await self._client.messages.create(
            model=config.model,
            max_tokens=config.max_tokens,
            system=SYSTEM_BLOCKS,
            tools=[DECISION_TOOL],
            tool_choice={"type": "tool", "name": DECISION_TOOL_NAME},
            messages=messages_for(message.content, history, passages, config.history_turns),
            stream=True,
            timeout=remaining,
        )
        # The raw events, not `messages.stream()`: that helper builds a snapshot of the whole
        # message on every event, which at 50 concurrent streams costs more CPU than the rest
        # of the turn. The tool input so far is parsed by jiter in partial mode instead, for
        # the reply so far (a decision is a few hundred bytes: well under a microsecond each).
        call: str | None = None
        stop_reason = None
        async with stream:
            async for event in stream:
                if event.type == "content_block_start" and event.content_block.type == "tool_use":
                    call = "" if event.content_block.name == DECISION_TOOL_NAME else None
                elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    if call is not None:
                        call += event.delta.partial_json
                        if draft is not None and call.strip():
                            self._draft(call, draft)
                elif event.type == "message_delta":
                    stop_reason = event.delta.stop_reason
        if call is None or stop_reason != "tool_use":
            raise IncompleteDecision(f"no complete decision (stop_reason {stop_reason})")
        return self._decision(ModelDecision.model_validate_json(call or "{}"), passages)

    def _draft(self, call: str, draft: Draft) -> None:
        """The reply so far into `draft`, once the call so far is a confident answer (the
        schema asks for the action and confidence before the reply; a model that writes the
        reply first is only shown whole). A number cut short is never above its final value,
        so a confidence that passes here passes at the end."""
        partial = jiter.from_json(call.encode(), partial_mode="trailing-strings")
        if not isinstance(partial, dict):
            return  # not an object: the complete call fails validation
        confidence, reply = partial.get("confidence"), partial.get("reply")
        if (
            partial.get("action") == "answer"
            and isinstance(confidence, int | float)
            and confidence >= self._config.model_min_confidence
            and isinstance(reply, str)
        ):
            draft.grow(reply.lstrip())

    def _decision(self, decided: ModelDecision, passages: list[Passage]) -> Decision:
        used = [passages[i - 1] for i in dict.fromkeys(decided.sources) if 0 < i <= len(passages)]
        sources = sources_of(used)
        explanation = next(iter(decided.explanation.strip().splitlines()), "")
        if decided.action == "escalate":
            return Decision(
                action=Action.ESCALATE,
                # An escalation without a reason: the model was unsure.
                reason=_REASONS[decided.reason] if decided.reason else Reason.LOW_CONFIDENCE,
                explanation=explanation or "Claude escalated without a reason.",
                confidence=decided.confidence,
                sources=sources,
                reply=decided.reply.strip(),
            )
        if not decided.reply.strip() or decided.confidence < self._config.model_min_confidence:
            return Decision(
                action=Action.ESCALATE,
                reason=Reason.LOW_CONFIDENCE,
                explanation=f"Claude's confidence {decided.confidence:.2f} is below "
                f"{self._config.model_min_confidence:.2f}.",
                confidence=decided.confidence,
                sources=sources,
                reply=self._config.messages.low_confidence,
            )
        return Decision(
            action=Action.ANSWER,
            explanation=explanation or f"Claude answered from {len(used)} passage(s).",
            confidence=decided.confidence,
            sources=sources,
            reply=decided.reply.strip(),
        )

    async def _fall_back(
        self,
        message: Inbound,
        history: list[TranscriptEntry],
        passages: list[Passage],
        cause: str,
    ) -> Decision:
        log.warning("claude.unavailable", cause=cause)
        offline = await self._offline.answer(message, history, passages)
        if offline.action is Action.ANSWER:
            note = f"Claude unavailable ({cause}); answered offline. {offline.explanation}"
            return offline.model_copy(update={"explanation": note})
        return escalate(
            Reason.MODEL_UNAVAILABLE,
            f"Claude unavailable ({cause}) and no confident offline answer.",
            reply=self._config.messages.holding,
            confidence=offline.confidence,
        )

    def _out_of_time(self, deadline: float) -> Any:
        """Stop retrying when the wait would leave less than `retry_min_time` for the call."""
        least = self._config.retry_min_time

        def stop(state: RetryCallState) -> bool:
            now = asyncio.get_running_loop().time()
            return now + state.upcoming_sleep + least > deadline

        return stop


def _transient(error: BaseException) -> bool:
    if isinstance(error, APIConnectionError):  # includes timeouts of one attempt
        return True
    if not isinstance(error, APIStatusError):
        return False
    status = error.status_code
    # An `error` event mid-stream arrives on a 200 response:
    # https://docs.claude.com/en/api/streaming#error-events
    return status < 400 or status in (408, 409, 429) or status >= 500


def _wait(state: RetryCallState) -> float:
    """The server's `retry-after(-ms)`, else a short jittered backoff."""
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, APIStatusError):
        headers = error.response.headers
        # Rate limits: https://docs.claude.com/en/api/rate-limits#response-headers
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                return max(float(headers[name]) * scale, 0.0)
            except (KeyError, ValueError):
                continue  # absent, or an HTTP date: the backoff is used instead
    return _BACKOFF(state)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.info(
        "claude.retry",
        attempt=state.attempt_number,
        cause=_describe(error) if error else None,
        wait=round(state.upcoming_sleep, 3),
    )


def _describe(error: BaseException) -> str:
    """What failed, for logs and the escalation's explanation: no message bodies, no secrets."""
    if isinstance(error, TimeoutError):
        return "no answer within the deadline"
    if isinstance(error, APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        detail = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
        kind = detail.get("type") or body.get("type") or type(error).__name__
        if error.status_code < 400:
            return f"stream error {kind}"
        return f"HTTP {error.status_code} {kind}"
    if isinstance(error, APIConnectionError):
        return type(error).__name__
    return f"invalid decision: {type(error).__name__}"
