"""The pipeline: what happens to one customer message, top to bottom.

The bus calls `handle` one message at a time per conversation, in arrival order, so the
dedupe check and every state change below are free of races within a conversation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from gateway import metrics
from gateway.answering import Answerer, Passage, PolicyCheck
from gateway.archive.recorder import Recorder
from gateway.channel import Channel
from gateway.message import (
    Action,
    Conversation,
    Decision,
    Inbound,
    InboundKind,
    Mode,
    Outbound,
    Reason,
    Role,
    TranscriptEntry,
    TurnResult,
)
from gateway.relay import Relay
from gateway.results import TurnResults
from gateway.satisfaction import Satisfaction
from gateway.store import Store
from gateway.streaming import LiveReply

log = structlog.get_logger(__name__)

HISTORY_TURNS = 20
# A half-done message is its conversation's latest, so its traces are among the last entries:
# the customer's message, then at most a holding line, and the bot's reply or a
# delivery-failure note.
RECOVERY_WINDOW = 4


@dataclass(frozen=True, slots=True)
class ReplyTexts:
    """What the pipeline itself says (the operator writes them under `brain.messages`)."""

    error: str  # the answerer failed
    holding: str  # instead of a reply that broke the policy
    no_agents: str  # an escalation with no agents' console to take it
    wait: str  # the first response when the answer is not ready by the first-response deadline


class Pipeline:
    def __init__(
        self,
        *,
        store: Store,
        answerer: Answerer,
        policy: PolicyCheck,
        channels: Mapping[str, Channel],
        results: TurnResults,
        texts: ReplyTexts,
        first_response: float,
        relay: Relay | None = None,
        archive: Recorder | None = None,
        satisfaction: Satisfaction | None = None,
    ) -> None:
        """`first_response`: seconds from a message's receipt after which, if no text of the
        answer is shown yet, the customer is told `texts.wait` while the answer is finished."""
        self._store = store
        self._answerer = answerer
        self._policy = policy
        self._channels = channels
        self._results = results
        self._texts = texts
        self._first_response = first_response
        self._relay = relay  # the human hand-off; None without an agents' console
        self._archive = archive  # only enqueues: the database is written off the reply's path
        self._satisfaction = satisfaction  # the satisfaction ask; None: never asked

    async def handle(self, message: Inbound) -> TurnResult:
        structlog.contextvars.bind_contextvars(
            conversation=message.conversation, message=message.id
        )
        try:
            result = await self._process(message)
        finally:
            structlog.contextvars.unbind_contextvars("conversation", "message")
        if message.kind is InboundKind.CUSTOMER:  # agents' events and timers are not turns
            metrics.observe_turn(message.channel, result)
        await self._results.publish(result)
        return result

    async def _process(self, message: Inbound) -> TurnResult:
        # 1. Dedupe: a provider's redelivery of a message already answered gets nothing.
        if await self._store.is_processed(message.dedupe_key):
            log.info("pipeline.duplicate", provider_message_id=message.provider_message_id)
            return _result(message, Decision(action=Action.ANSWER), (), duplicate=True)
        # Agents' events, timers, delivery reports and ratings: no bot turn.
        if message.kind is not InboundKind.CUSTOMER:
            return await self._event(message)
        # Retrieval starts once the transcript is read (a follow-up is searched with the
        # customer's previous turn) and runs while the state loads.
        transcript = asyncio.create_task(
            self._store.transcript(message.conversation, last=HISTORY_TURNS)
        )
        retrieval = asyncio.create_task(self._retrieve(message, transcript))

        # 2. State and transcript. A message a dead worker left half-done is already recorded
        #    (it is necessarily the conversation's latest), so it is not recorded twice.
        conversation = await self._store.load(message.conversation) or Conversation(
            key=message.conversation, channel=message.channel, customer=message.sender
        )
        conversation.reply_thread = message.thread
        conversation.reply_extras = message.extras
        history = await transcript
        latest = history[-RECOVERY_WINDOW:]
        taken_over = any(entry.message_id == message.id for entry in latest)
        if not taken_over:
            await self._store.append(
                message.conversation,
                TranscriptEntry(role=Role.CUSTOMER, text=message.content, message_id=message.id),
            )
        already_answered = any(
            entry.in_reply_to == message.id and not entry.holding for entry in latest
        )
        held = any(entry.in_reply_to == message.id and entry.holding for entry in latest)
        # A reply that is only a digit, next after the satisfaction ask, is its answer.
        satisfaction = self._satisfaction
        score = satisfaction.replied_score(conversation, message) if satisfaction else None
        if satisfaction is not None and score is not None and not already_answered:
            retrieval.cancel()
            return await self._rated(message, conversation, satisfaction, score)

        # 3. Decide: the bot answers only while no person owns the conversation, and only
        #    once: a reply a previous attempt already sent is not worked out again (one that
        #    only said the holding line is answered, without saying it again).
        live: LiveReply | None = None
        if already_answered or conversation.mode is not Mode.BOT:
            retrieval.cancel()
        if already_answered:
            decision = Decision(
                action=Action.ANSWER,
                explanation="Answered by an earlier attempt at this message; not sent again.",
            )
        elif conversation.mode is not Mode.BOT:
            if self._relay is not None:
                await self._relay.mirror(conversation, message)
            decision = Decision(
                action=Action.HUMAN,
                reason=Reason.HUMAN_ACTIVE,
                explanation=f"The conversation is {conversation.mode.value}; the bot stays silent.",
            )
        else:
            # Typing is shown while the brain works, not before it starts: the provider's
            # round trip stays off the 2 s path (awaited before the reply, which follows it).
            typing = asyncio.create_task(self._typing(message))
            # First response now, complete answer next: the reply reaches the customer while
            # it is written (where the channel streams), or a holding line does at the
            # first-response deadline (gateway/streaming.py).
            live = self._live_reply(message, wait=not held)
            if taken_over:
                await live.resume()  # the growing message a dead worker left, if any
            decision = await self._decide(message, conversation, history, retrieval, live)
            await typing

        # 4. Send what the customer has not seen yet of the reply.
        replies = await live.finish(decision.reply, decision.sources) if live else ()

        # 5. Record the outcome, then mark the message done.
        conversation.failed_turns = conversation.failed_turns + 1 if decision.is_failed_turn else 0
        if self._satisfaction is not None:
            await self._satisfaction.after_turn(conversation, decision, replied=bool(replies))
        conversation.updated_at = datetime.now(UTC)
        await self._store.save(conversation)
        shown = live.first_response_ms if live else None
        result = _result(message, decision, replies, first_response_ms=shown)
        if self._archive is not None:
            await self._archive.turn(message, conversation, result)
        await self._store.mark_processed(message.dedupe_key)
        log.info(
            "pipeline.turn",
            action=decision.action.value,
            reason=decision.reason,
            confidence=round(decision.confidence, 3),
        )
        return result

    def _live_reply(self, message: Inbound, *, wait: bool) -> LiveReply:
        return LiveReply(
            channel=self._channels.get(message.channel),
            store=self._store,
            policy=self._policy,
            reply=Outbound(
                channel=message.channel,
                conversation=message.conversation,
                text="",
                in_reply_to=message.id,
                thread=message.thread,
                extras=message.extras,
            ),
            received_at=message.received_at,
            first_response=self._first_response,
            wait=self._texts.wait if wait else None,
        )

    async def _retrieve(
        self, message: Inbound, transcript: asyncio.Task[list[TranscriptEntry]]
    ) -> list[Passage] | None:
        # Shielded: cancelling the retrieval must not cancel the transcript read it waits for.
        return await self._answerer.retrieve(message, await asyncio.shield(transcript))

    async def _decide(
        self,
        message: Inbound,
        conversation: Conversation,
        history: list[TranscriptEntry],
        retrieval: asyncio.Task[list[Passage] | None],
        live: LiveReply,
    ) -> Decision:
        decided: Decision | None
        try:
            passages = await retrieval
            live.quotes = tuple(passage.text for passage in passages or ())
            # The holding line covers a slow answer; one that drafts a sentence breaking the
            # policy is stopped there.
            decided = await live.wait_for(
                self._answerer.decide(message, conversation, history, passages, draft=live)
            )
        except Exception:
            log.exception("pipeline.answerer_failed")
            metrics.ERRORS.labels("answer").inc()
            decided = Decision(
                action=Action.ESCALATE,
                reason=Reason.PIPELINE_ERROR,
                explanation="The answerer failed; see the logs.",
                reply=self._texts.error,
            )
        decision = self._within_policy(decided, live)
        if decision.action is Action.ESCALATE:
            decision = await self._hand_off(conversation, decision)
        return decision

    async def _hand_off(self, conversation: Conversation, decision: Decision) -> Decision:
        """The relay opens the agents' thread and tells the customer when a person comes; with
        no agents' console (or an unreachable one) they are told where a person can be reached."""
        arrival = await self._relay.escalate(conversation, decision) if self._relay else None
        reply = " ".join(filter(None, (decision.reply, arrival or self._texts.no_agents)))
        return decision.model_copy(update={"reply": reply})

    async def _event(self, message: Inbound) -> TurnResult:
        """An agent's reply or button, a timer, a delivery report (the hand-off relay acts), or
        a satisfaction rating given by a button or a link."""
        conversation = await self._store.load(message.conversation)
        satisfaction = self._satisfaction
        replies: tuple[str, ...] = ()
        if conversation is None:
            log.warning("pipeline.event_dropped", kind=message.kind.value, why="no conversation")
        elif message.kind is InboundKind.RATING:
            if satisfaction is not None and message.rating is not None:
                rating = message.rating
                replies = await satisfaction.answer(
                    conversation, message, ask=rating.ask, score=rating.score
                )
                await self._save(conversation)
        elif (
            message.kind is InboundKind.TICK
            and satisfaction
            and satisfaction.owns_tick(conversation)
        ):
            await satisfaction.tick(conversation)
            await self._save(conversation)
        elif self._relay is None:
            log.warning("pipeline.event_dropped", kind=message.kind.value, why="no relay")
        else:
            before = conversation.mode
            await self._relay.handle(message, conversation)
            if satisfaction is not None:
                await satisfaction.after_relay(message, before, conversation)
            await self._save(conversation)
            if self._archive is not None:
                await self._archive.relay_event(message, before, conversation)
        await self._store.mark_processed(message.dedupe_key)
        explanation = f"{message.kind.value}: not a question, no bot turn."
        return _result(message, Decision(action=Action.HUMAN, explanation=explanation), replies)

    async def _rated(
        self,
        message: Inbound,
        conversation: Conversation,
        satisfaction: Satisfaction,
        score: int,
    ) -> TurnResult:
        """The customer's reply was the score the satisfaction ask asked for: recorded and
        thanked for, instead of a turn (the archive keeps it as the rating, not a question)."""
        ask = conversation.satisfaction.ask_id
        assert ask is not None  # a reply answers only an ask that was sent
        replies = await satisfaction.answer(conversation, message, ask=ask, score=score)
        await self._save(conversation)
        await self._store.mark_processed(message.dedupe_key)
        explanation = f"A satisfaction rating ({score} of 5), not a question."
        decision = Decision(action=Action.ANSWER, explanation=explanation)
        return _result(message, decision, replies)

    async def _save(self, conversation: Conversation) -> None:
        conversation.updated_at = datetime.now(UTC)
        await self._store.save(conversation)

    def _within_policy(self, decision: Decision | None, live: LiveReply) -> Decision:
        """A reply that breaks the operator's policy is never sent: a holding reply and an
        escalation (so a person takes over) replace it. `live.violation`: a sentence the
        answerer drafted broke it already, and the answer was stopped (`decision` None)."""
        violation = live.violation
        if violation is None and decision is not None and decision.reply:
            violation = self._policy.check(decision.reply, live.quotes)
        if violation is None:
            assert decision is not None  # only a violation stops an answer
            return decision
        log.warning("pipeline.policy_blocked", rule=violation.rule, why=violation.why)
        metrics.ERRORS.labels("policy").inc()
        return Decision(
            action=Action.ESCALATE,
            reason=Reason.POLICY_RESTRICTED,
            explanation=f"The reply broke the policy rule {violation.rule!r} "
            f"({violation.why}) and was not sent.",
            confidence=decision.confidence if decision else 0.0,
            reply=self._texts.holding,
        )

    async def _typing(self, message: Inbound) -> None:
        channel = self._channels.get(message.channel)
        if channel is None or not channel.capabilities.typing:
            return
        try:
            await channel.typing(message.conversation)
        except Exception:
            log.warning("pipeline.typing_failed", exc_info=True)


def _result(
    message: Inbound,
    decision: Decision,
    replies: tuple[str, ...],
    *,
    duplicate: bool = False,
    first_response_ms: float | None = None,
) -> TurnResult:
    elapsed = (datetime.now(UTC) - message.received_at).total_seconds() * 1000
    return TurnResult(
        message_id=message.id,
        conversation=message.conversation,
        replies=replies,
        decision=decision,
        latency_ms=round(max(elapsed, 0.0), 2),
        first_response_ms=first_response_ms,
        duplicate=duplicate,
    )
