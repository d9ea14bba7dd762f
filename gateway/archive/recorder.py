"""What the pipeline tells the archive: each turn, and each hand-off transition it saw.

Hand-off events are read off the conversation's mode before and after the relay handled an
agent's event or a timer, so the relay itself needs no archive calls: a claim that changed
nothing (already claimed) or a stale timer records nothing. A turn's tool calls are read the
same way, off the transcript the turn wrote (its tool lines, `turn_calls`), after the reply
was sent: the tools need no archive calls either, and a message processed again finds the
same lines and gives the same ids.

An agent's reply keeps its text (the event's `detail`), and an escalation the agents' thread it
opened: a question the bot could not answer and the answer a person gave are what a
knowledge-base draft is made of (gateway/archive/gaps.py).
"""

from __future__ import annotations

import structlog

from gateway import metrics
from gateway.archive import ArchiveEvent, Decided, EventKind
from gateway.archive.queue import ArchiveSink
from gateway.message import (
    Action,
    Conversation,
    Inbound,
    InboundKind,
    Mode,
    ToolCallRecord,
    TurnResult,
    turn_calls,
)
from gateway.store import Store

log = structlog.get_logger(__name__)

# (event kind, mode before, mode after) -> what the archive records; None: any mode.
_TRANSITIONS: dict[InboundKind, tuple[EventKind, Mode | None, Mode]] = {
    InboundKind.CLAIM: (EventKind.CLAIMED, None, Mode.HUMAN),
    InboundKind.AGENT_REPLY: (EventKind.AGENT_REPLY, None, Mode.HUMAN),
    InboundKind.RESOLVE: (EventKind.RESOLVED, None, Mode.BOT),
    InboundKind.HAND_BACK: (EventKind.HANDED_BACK, None, Mode.BOT),
    InboundKind.TICK: (EventKind.TIMED_OUT, Mode.WAITING, Mode.BOT),
}
# The transcript entries read first for a turn's calls: its message, a holding line, the
# calls, the reply. A turn with more calls than fit is read whole.
CALLS_WINDOW = 16


class Recorder:
    def __init__(self, queue: ArchiveSink, *, calls_from: Store | None = None) -> None:
        """`calls_from`: the store whose transcripts hold the tools' lines; None when no tools
        are configured (nothing to read)."""
        self._queue = queue
        self._calls_from = calls_from

    async def turn(self, message: Inbound, conversation: Conversation, result: TurnResult) -> None:
        decision = result.decision
        await self._put(
            _event(
                message,
                conversation,
                EventKind.TURN,
                text=message.content,
                decision=Decided(
                    action=decision.action,
                    reason=decision.reason,
                    confidence=decision.confidence,
                    sources=decision.sources,
                    latency_ms=result.latency_ms,
                    replied=bool(result.replies),
                ),
            )
        )
        # The decision escalates only from the bot's mode: waiting now means a thread opened.
        if decision.action is Action.ESCALATE and conversation.mode is Mode.WAITING:
            thread = _thread(conversation)
            await self._put(
                _event(message, conversation, EventKind.ESCALATED, suffix="escalated", text=thread)
            )
        if decision.action is not Action.HUMAN:  # the bot worked on it: it may have called
            for number, call in enumerate(await self._calls(message)):
                await self._put(
                    _event(
                        message,
                        conversation,
                        EventKind.TOOL_CALL,
                        suffix=f"call:{number}",
                        call=call,
                    )
                )

    async def relay_event(self, message: Inbound, before: Mode, conversation: Conversation) -> None:
        """After the relay handled a non-customer event; `before` is the mode it found."""
        if message.kind is InboundKind.DELIVERY:
            await self._put(
                _event(message, conversation, EventKind.DELIVERY_FAILED, text=message.text)
            )
            return
        recorded = _TRANSITIONS.get(message.kind)
        if recorded is None:
            return
        kind, required, after = recorded
        if conversation.mode is not after or (required is not None and before is not required):
            return  # rejected, or nothing changed
        agent = (message.author or message.sender) if kind is not EventKind.TIMED_OUT else None
        if kind is EventKind.AGENT_REPLY and before is not Mode.HUMAN:
            # An agent's reply to a waiting conversation claims it.
            await self._put(
                _event(message, conversation, EventKind.CLAIMED, agent=agent, suffix="claimed")
            )
        elif kind is not EventKind.AGENT_REPLY and before is after:
            return  # a second claim by the owner, a resolve of what the bot already has
        text = message.content if kind is EventKind.AGENT_REPLY else ""
        await self._put(_event(message, conversation, kind, agent=agent, text=text))

    async def _calls(self, message: Inbound) -> list[ToolCallRecord]:
        """The calls made for `message`; none when its transcript cannot be read (the turn's
        record matters more than its calls')."""
        if self._calls_from is None:
            return []
        try:
            entries = await self._calls_from.transcript(message.conversation, last=CALLS_WINDOW)
            if not any(entry.message_id == message.id for entry in entries):
                entries = await self._calls_from.transcript(message.conversation)
        except Exception:
            log.exception("archive.calls_unread")
            metrics.ERRORS.labels("archive").inc()
            return []
        return turn_calls(entries, message.id)

    async def rated(
        self, message: Inbound, conversation: Conversation, *, ask: str, score: int
    ) -> None:
        """A satisfaction answer; its id is the ask's, so an ask is rated once in the archive."""
        event = _event(message, conversation, EventKind.SATISFACTION)
        await self._put(event.model_copy(update={"id": f"{ask}:satisfaction", "score": score}))

    async def _put(self, event: ArchiveEvent) -> None:
        """Never fails the turn: the reply matters more than its record."""
        metrics.observe_archived(event)
        try:
            await self._queue.put(event)
        except Exception:
            log.exception("archive.enqueue_failed", kind=event.kind.value)
            metrics.ERRORS.labels("archive").inc()


def _thread(conversation: Conversation) -> str:
    """The agents' thread as `channel:ts` (the console's AgentThread.key); empty without one."""
    if conversation.agent_thread_channel and conversation.agent_thread_ts:
        return f"{conversation.agent_thread_channel}:{conversation.agent_thread_ts}"
    return ""


def _event(
    message: Inbound,
    conversation: Conversation,
    kind: EventKind,
    *,
    suffix: str | None = None,
    text: str = "",
    agent: str | None = None,
    decision: Decided | None = None,
    call: ToolCallRecord | None = None,
) -> ArchiveEvent:
    return ArchiveEvent(
        id=f"{message.id}:{suffix}" if suffix else message.id,
        kind=kind,
        conversation=conversation.key,
        channel=conversation.channel,
        customer=conversation.customer,
        at=message.received_at,
        text=text,
        agent=agent,
        decision=decision,
        call=call,
    )
