"""The Claude answerer: a grounded answer, streamed to the customer as it is written, and a
structured decision.

Claude is asked once per message, streaming, and must end its turn by calling one of two
tools, `answer` (reply, sources, confidence) or `escalate` (reason, reply, explanation), so the
decision comes back as a tool call's validated input, never as prose to search for a magic
word. The tool's name is the action, known before any of its input; an answer's reply is its
first field, so it grows in the pipeline's draft while the model writes it, and the customer
sees its first sentence long before the call ends (`gateway/streaming.py`). An answer rated
below `brain.model_min_confidence` escalates when the call is complete, its streamed text
replaced where the channel can edit.

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
import json
from dataclasses import dataclass
from typing import Any

import jiter
import structlog
from anthropic import APIConnectionError, APIError, APIStatusError, AsyncAnthropic
from anthropic.types import MessageParam, ToolParam, ToolResultBlockParam, ToolUseBlockParam
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from brain.answerer import GroundedAnswerer, deadline_of, sources_of
from brain.config import BrainConfig
from brain.confirmation import confirms
from brain.escalation import escalate
from brain.knowledge import KnowledgeBase
from brain.ledger import CallLedger
from brain.offline import OfflineAnswerer
from brain.prompt import (
    ANSWER_TOOL_NAME,
    DECISION_TOOL_NAMES,
    DECISION_TOOLS,
    SYSTEM_BLOCKS,
    TOOLS_SYSTEM_BLOCKS,
    ModelDecision,
    messages_for,
    tool_result_text,
)
from brain.tools import ToolResult
from gateway.answering import Draft, Passage
from gateway.message import (
    Action,
    Conversation,
    Decision,
    Inbound,
    PendingAction,
    Reason,
    TranscriptEntry,
    utcnow,
)

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


@dataclass
class _ToolUse:
    """One tool_use block of a streamed response, its input JSON as it arrived."""

    id: str
    name: str
    json: str = ""

    def block(self) -> ToolUseBlockParam:
        try:
            arguments = json.loads(self.json or "{}")
        except ValueError:  # the model was told so in the call's result
            arguments = {}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": arguments}


class ClaudeAnswerer(GroundedAnswerer):
    def __init__(
        self, knowledge: KnowledgeBase, config: BrainConfig, ledger: CallLedger | None = None
    ) -> None:
        """`ledger`: the business's tools, offered to the model when any is configured."""
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
        self._ledger = ledger
        self._offer: list[ToolParam] | None = None  # built on first use: see `_offered`

    async def close(self) -> None:
        await self._client.close()

    def _offered(self) -> list[ToolParam]:
        """What the model may call besides the decision: the business's tools and, with
        procedures configured, one to start a procedure. Built on first use (the runtime sets
        `procedures` after the constructor), then the same on every request, as the prompt
        cache needs."""
        if self._offer is None:
            schemas = self._ledger.tools.schemas() if self._ledger is not None else []
            self._offer = [ToolParam(**schema) for schema in schemas]  # type: ignore[typeddict-item]
            if self.procedures is not None and (procedures := self.procedures.describe()):
                self._offer.append(start_procedure_tool(procedures))
        return self._offer

    async def answer(
        self,
        message: Inbound,
        conversation: Conversation,
        history: list[TranscriptEntry],
        passages: list[Passage],
        draft: Draft | None = None,
    ) -> Decision:
        deadline = deadline_of(message, self._config, self._config.answer_time)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._converse(
                    message, conversation, history, passages, deadline, draft
                )
        except (TimeoutError, APIError, ValueError) as error:
            return await self._fall_back(message, conversation, history, passages, _describe(error))

    async def _converse(
        self,
        message: Inbound,
        conversation: Conversation,
        history: list[TranscriptEntry],
        passages: list[Passage],
        deadline: float,
        draft: Draft | None,
    ) -> Decision:
        """Ask the model; run the tools it calls and ask again with their results, for up to
        `brain.max_tool_rounds` rounds, until it records its decision."""
        config = self._config
        messages = messages_for(message.content, history, passages, config.history_turns)
        if (confirmed := self._confirmed(message, conversation)) is not None:
            use = _ToolUse("toolu_confirmed", confirmed.tool, json.dumps(confirmed.arguments))
            result = await self._call(use, message, conversation)
            if result.failed:
                return self._tool_failed([result])
            messages += _exchange([use], [_result_block(use, result)])
        for round_ in range(config.max_tool_rounds + 1):
            uses: Decision | list[_ToolUse] = await self._retrying(deadline)(
                self._ask,
                messages,
                passages,
                deadline,
                draft,
                tools=round_ < config.max_tool_rounds,
            )
            if isinstance(uses, Decision):
                return uses
            started = next((use for use in uses if use.name == START_PROCEDURE), None)
            if started is not None and self.procedures is not None:
                name = json.loads(started.json or "{}").get("procedure")
                if name in self.procedures.describe():  # else: the model hears it is unknown
                    return await self.procedures.start(name, message, conversation)
            self._hold_if_slow(uses, message, draft)
            blocks, failed = [], []
            for use, outcome in zip(
                uses,
                await asyncio.gather(*(self._use(use, message, conversation) for use in uses)),
                strict=True,
            ):
                blocks.append(outcome if isinstance(outcome, dict) else _result_block(use, outcome))
                if not isinstance(outcome, dict) and outcome.failed and not outcome.correctable:
                    failed.append(outcome)
            if failed:
                return self._tool_failed(failed)
            messages += _exchange(uses, blocks)
        raise IncompleteDecision("no decision after the last tool round")  # it is forced then

    def _retrying(self, deadline: float) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=_wait,
            stop=stop_after_attempt(self._config.max_attempts) | self._out_of_time(deadline),
            before_sleep=_log_retry,
            reraise=True,
        )

    async def _ask(
        self,
        messages: list[MessageParam],
        passages: list[Passage],
        deadline: float,
        draft: Draft | None,
        *,
        tools: bool,
    ) -> Decision | list[_ToolUse]:
        """One streamed model turn: the decision, or the business's tools it calls first."""
        config = self._config
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.01)
        offered = self._offered()
        offer = tools and bool(offered)
        stream = await self._client.messages.create(
            model=config.model,
            max_tokens=config.max_tokens,
            system=TOOLS_SYSTEM_BLOCKS if offered else SYSTEM_BLOCKS,
            # The same tools on every turn (the prompt cache holds them; the decision's last, so
            # its breakpoint caches them all). A call is forced; a business tool called on the
            # last round instead of a decision leaves none, and the offline fallback answers.
            tools=[*offered, *DECISION_TOOLS],
            tool_choice={"type": "any"},
            messages=messages,
            stream=True,
            timeout=remaining,
        )
        # The raw events, not `messages.stream()`: that helper builds a snapshot of the whole
        # message on every event, which at 50 concurrent streams costs more CPU than the rest
        # of the turn. The tool input so far is parsed by jiter in partial mode instead, for
        # the reply so far (a decision is a few hundred bytes: well under a microsecond each).
        uses: dict[int, _ToolUse] = {}
        stop_reason = None
        async with stream:
            async for event in stream:
                if event.type == "content_block_start" and event.content_block.type == "tool_use":
                    block = event.content_block
                    uses[event.index] = _ToolUse(block.id, block.name)
                elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    if (use := uses.get(event.index)) is not None:
                        use.json += event.delta.partial_json
                        if draft is not None and use.name == ANSWER_TOOL_NAME:
                            self._draft(use.json, draft)
                elif event.type == "message_delta":
                    stop_reason = event.delta.stop_reason
        if stop_reason != "tool_use" or not uses:
            raise IncompleteDecision(f"no complete decision (stop_reason {stop_reason})")
        decided = next((use for use in uses.values() if use.name in DECISION_TOOL_NAMES), None)
        if decided is not None:  # it stands, whatever else the same turn called
            # Streamed eagerly, the input was never validated by the API: it is here.
            called = jiter.from_json((decided.json or "{}").encode())
            if not isinstance(called, dict):
                raise IncompleteDecision(f"{decided.name} was called with {type(called).__name__}")
            decision = ModelDecision.model_validate({**called, "action": decided.name})
            return self._decision(decision, passages)
        if not offer:
            raise IncompleteDecision("a tool call, but not the decision it was told to make")
        return list(uses.values())

    def _confirmed(self, message: Inbound, conversation: Conversation) -> PendingAction | None:
        """The action this message confirms, if one was waiting; a waiting action ends here
        either way (not confirmed: not done)."""
        pending, conversation.pending_action = conversation.pending_action, None
        if pending is None or self._ledger is None or pending.tool not in self._ledger.tools:
            return None
        if (utcnow() - pending.asked_at).total_seconds() > self._config.confirm_within:
            return None
        return pending if confirms(message.content) else None

    async def _use(
        self, use: _ToolUse, message: Inbound, conversation: Conversation
    ) -> ToolResult | ToolResultBlockParam:
        """Call a tool the model asked for; a change is only proposed, its result the
        model's cue to ask the customer to confirm it."""
        if self._ledger is None or use.name not in self._ledger.tools:
            return _error_block(use, f"there is no tool named {use.name}")
        tools = self._ledger.tools
        try:
            arguments = json.loads(use.json or "{}")
        except ValueError:
            return _error_block(use, "the arguments are not JSON")
        if tools.effect(use.name) != "change":
            return await self._call(use, message, conversation)
        unusable = tools.check(use.name, arguments, message.identity)
        if unusable is not None:
            return _error_block(use, unusable[1])
        conversation.pending_action = PendingAction(tool=use.name, arguments=arguments)
        log.info("tool.proposed", tool=use.name)
        return {
            "type": "tool_result",
            "tool_use_id": use.id,
            "content": "Not done yet: this changes the customer's account, so it runs only "
            "once the customer confirms it in their next message. Ask them to confirm exactly "
            "this: " + json.dumps({use.name: arguments}, ensure_ascii=False),
        }

    async def _call(
        self, use: _ToolUse, message: Inbound, conversation: Conversation
    ) -> ToolResult:
        assert self._ledger is not None
        return await self._ledger.call(
            use.name,
            json.loads(use.json or "{}"),
            message=message,
            conversation=conversation.key,
            scope=f"claude:{use.name}",
        )

    def _hold_if_slow(self, uses: list[_ToolUse], message: Inbound, draft: Draft | None) -> None:
        """The holding line now, when the calls (at their timeout) and one more model turn (at
        least `brain.retry_min_time`) would end past the first-response deadline."""
        if draft is None or self._ledger is None:
            return
        tools = self._ledger.tools
        slowest = max((tools.timeout(use.name) for use in uses if use.name in tools), default=0.0)
        now = asyncio.get_running_loop().time()
        if now + slowest + self._config.retry_min_time > deadline_of(message, self._config):
            draft.hold(self._config.messages.checking)

    def _tool_failed(self, failed: list[ToolResult]) -> Decision:
        return escalate(
            Reason.TOOL_FAILED,
            "; ".join(result.describe() for result in failed),
            reply=self._config.messages.tool_failed,
            confidence=1.0,
        )

    def _draft(self, call: str, draft: Draft) -> None:
        """The reply so far of an answer's call so far into `draft` (the schema puts it first;
        a model that writes it after other fields streams it from there on)."""
        if not call.strip():
            return
        try:
            partial = jiter.from_json(call.encode(), partial_mode="trailing-strings")
        except ValueError:
            return  # not JSON so far (eager input is unvalidated): the complete call decides
        if isinstance(partial, dict) and isinstance(reply := partial.get("reply"), str):
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
        conversation: Conversation,
        history: list[TranscriptEntry],
        passages: list[Passage],
        cause: str,
    ) -> Decision:
        log.warning("claude.unavailable", cause=cause)
        offline = await self._offline.answer(message, conversation, history, passages)
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


START_PROCEDURE = "start_procedure"


def start_procedure_tool(procedures: dict[str, str]) -> ToolParam:
    listed = "\n".join(f"- {name}: {description}" for name, description in procedures.items())
    return {
        "name": START_PROCEDURE,
        "description": "Start one of the business's step-by-step flows for the customer's "
        "request; it asks the customer for what it needs and replies itself, so record no "
        f"decision with it. The flows:\n{listed}",
        "input_schema": {
            "type": "object",
            "properties": {"procedure": {"type": "string", "enum": list(procedures)}},
            "required": ["procedure"],
            "additionalProperties": False,
        },
    }


def _exchange(uses: list[_ToolUse], results: list[ToolResultBlockParam]) -> list[MessageParam]:
    """The model's tool calls and their results, as the next request's last two messages."""
    return [
        {"role": "assistant", "content": [use.block() for use in uses]},
        {"role": "user", "content": results},
    ]


def _result_block(use: _ToolUse, result: ToolResult) -> ToolResultBlockParam:
    if result.correctable:
        return _error_block(use, result.detail)
    text = tool_result_text(use.name, result.outcome.value, result.status, result.data)
    return {"type": "tool_result", "tool_use_id": use.id, "content": text}


def _error_block(use: _ToolUse, why: str) -> ToolResultBlockParam:
    return {"type": "tool_result", "tool_use_id": use.id, "content": why, "is_error": True}


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
