"""The hand-off relay: what each transition of `gateway/handoff.py` means, for both sides.

The pipeline calls it for a customer's message that escalates (`escalate`) or arrives while a
person owns the conversation (`mirror`), and for every agent event, timer tick and delivery
report (`handle`). Agents are reached through the `AgentConsole` protocol (the Slack channel),
customers through their channel. Everything runs inside the pipeline's turn of the
conversation, so each step sees the state the previous one left, on any worker.

`run` is the worker's background part: it turns due timers and delivery reports into events
on the bus, so they are processed in the conversation's order and deduped across workers.
"""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog
from babel.dates import format_datetime, format_timedelta

from gateway import metrics, timers, topics
from gateway.bus import Bus
from gateway.channel import Channel
from gateway.console import AgentConsole, AgentThread, EscalationCard
from gateway.delivery import deliver
from gateway.handoff import Event, Rejected, State, transition
from gateway.message import (
    TOOL_AUTHOR,
    Conversation,
    Decision,
    Inbound,
    InboundKind,
    Mode,
    Outbound,
    Reason,
    Role,
    TranscriptEntry,
    utcnow,
)
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.config import BusinessHours, HandoffConfig

log = structlog.get_logger(__name__)

SUMMARY_MESSAGES = 3
SUMMARY_CHARS = 240
_AGENT_EVENTS = {
    InboundKind.AGENT_REPLY: Event.AGENT_REPLY,
    InboundKind.CLAIM: Event.CLAIM,
    InboundKind.RESOLVE: Event.RESOLVE,
    InboundKind.HAND_BACK: Event.HAND_BACK,
}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Relay:
    def __init__(
        self,
        *,
        console: AgentConsole,
        store: Store,
        bus: Bus,
        channels: Mapping[str, Channel],
        config: HandoffConfig,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._console = console
        self._store = store
        self._bus = bus
        self._channels = channels
        self._config = config
        self.clock = clock  # tests fix it (business hours)

    # --- the customer's side ------------------------------------------------------------

    async def escalate(self, conversation: Conversation, decision: Decision) -> str | None:
        """Open the agents' thread and wait for a person; returns what to tell the customer.

        None when the console cannot be reached: the caller keeps the bot's fallback message.
        """
        state = transition(_state(conversation), Event.ESCALATE)
        history = await self._store.transcript(conversation.key)
        card = EscalationCard(
            conversation=conversation.key,
            customer=conversation.customer,
            customer_channel=conversation.channel,
            reason=decision.reason,
            explanation=decision.explanation,
            summary=summarize(history, decision.reason),
            last_answer=next((e.text for e in reversed(history) if e.role is Role.BOT), ""),
            sources=decision.sources,
            tool_calls=tuple(
                e.text for e in history if e.role is Role.SYSTEM and e.author == TOOL_AUTHOR
            ),
        )
        try:
            thread = await self._console.open_thread(
                card, channel=self._route(conversation.channel, decision.reason)
            )
        except Exception:
            log.exception("relay.open_thread_failed")
            metrics.ERRORS.labels("handoff").inc()
            return None
        await self._store.link_thread(thread.key, conversation.key)
        await self._quietly(self._console.post_transcript(thread, history))
        now = self.clock()
        _enter(conversation, state, now)
        conversation.agent_thread_channel, conversation.agent_thread_ts = thread.channel, thread.ts
        conversation.card = card.model_dump(mode="json")
        conversation.escalated_at, conversation.reminders_sent, conversation.pinged = now, 0, False
        await self._reschedule(conversation)
        log.info("relay.escalated", thread=thread.key, reason=decision.reason)
        return self._arrival_message(now)

    async def mirror(self, conversation: Conversation, message: Inbound) -> None:
        """A customer's message while a person owns (or is about to own) the conversation."""
        thread = _thread(conversation)
        if thread is not None:
            who = conversation.customer or "Customer"
            await self._quietly(self._console.post(thread, f"{who}: {message.content}"))

    # --- agents' events, timers, delivery reports ---------------------------------------

    async def handle(self, message: Inbound, conversation: Conversation) -> None:
        """One non-customer event, inside the conversation's turn; the caller saves the state."""
        if message.kind is InboundKind.TICK:
            await self._tick(conversation)
        elif message.kind is InboundKind.DELIVERY:
            await self._delivery_failed(conversation, message)
        elif message.kind is InboundKind.AGENT_NOTE:
            # The note already stands in the agents' thread, and the transcript is shown to
            # the customer (REST, web chat history), so it is not copied there.
            log.info("relay.note", agent=message.author)
        else:
            await self._agent_event(message, conversation)

    async def _agent_event(self, message: Inbound, conversation: Conversation) -> None:
        event = _AGENT_EVENTS[message.kind]
        agent = message.author or message.sender
        before = _state(conversation)
        try:
            after = transition(before, event, agent_id=message.sender, agent=agent)
        except Rejected as rejected:
            log.info("relay.rejected", transition=event.value, agent=agent, why=str(rejected))
            await self._say_in_thread(conversation, f"{agent}: {rejected}")
            return
        _enter(conversation, after, self.clock())
        if after != before:
            await self._reschedule(conversation)
            await self._redraw(conversation, agent)
        messages = self._config.messages
        if event is Event.AGENT_REPLY:
            if await self._already_sent(conversation.key, message.id):
                return  # a worker died after sending it; this is the redelivery
            text = self._config.signature.format(agent=agent, text=message.content)
            await self._tell(conversation, text, author=agent, message_id=message.id)
        elif event is Event.CLAIM and before.mode is not Mode.HUMAN:
            await self._tell(conversation, messages.claimed.format(agent=agent))
        elif event is Event.RESOLVE:
            await self._tell(conversation, messages.resolved.format(agent=agent))
        elif event is Event.HAND_BACK:
            await self._tell(conversation, messages.handed_back.format(agent=agent))

    async def _tick(self, conversation: Conversation) -> None:
        """Do whatever fell due: time out, ping the agents, remind the customer."""
        if conversation.mode is not Mode.WAITING or conversation.escalated_at is None:
            await self._reschedule(conversation)  # a stale tick: nothing is due any more
            return
        config = self._config
        waited = (self.clock() - conversation.escalated_at).total_seconds()
        if waited >= config.timeout:
            _enter(conversation, transition(_state(conversation), Event.TIMEOUT), self.clock())
            await self._reschedule(conversation)
            await self._redraw(conversation, None)
            await self._say_in_thread(
                conversation,
                f"Nobody claimed this within {_duration(config.timeout)}: it is back with the "
                "bot, and the customer was promised a follow-up. Reply here to follow up.",
            )
            await self._tell(conversation, config.messages.timed_out)
            return
        if not conversation.pinged and waited >= config.unclaimed_ping_after:
            conversation.pinged = True
            await self._say_in_thread(
                conversation,
                f"Still unclaimed after {_duration(waited)}.",
                mention=config.ping_group,
            )
        reminders_due = int(waited // config.reminder_interval)
        if reminders_due > conversation.reminders_sent:
            conversation.reminders_sent = reminders_due
            await self._tell(conversation, config.messages.reminder)
        await self._reschedule(conversation)

    async def _delivery_failed(self, conversation: Conversation, message: Inbound) -> None:
        status = message.extras.get("status", "failed")
        # The channel already noted it in the transcript (`ChannelContext.report_undelivered`).
        line = f"A message to the customer was not delivered ({status}): {message.text}"
        await self._say_in_thread(conversation, line)

    # --- the worker's background --------------------------------------------------------

    async def run(self, *, sweep_interval: float | None = None) -> None:
        """Until cancelled: publish a TICK for each due timer and a DELIVERY event for each
        delivery report broadcast by a channel (on any process)."""
        reports: asyncio.Queue[topics.DeliveryReport] = asyncio.Queue()
        topics.subscribe(self._bus, topics.DELIVERY, reports.put_nowait)
        async with asyncio.TaskGroup() as group:
            interval = sweep_interval or self._config.sweep_interval
            group.create_task(timers.sweep(self._store, self._bus, interval, self._now))
            group.create_task(self._forward_reports(reports))

    def _now(self) -> datetime:
        return self.clock()  # read at each sweep: tests move the clock while the relay runs

    async def _forward_reports(self, reports: asyncio.Queue[topics.DeliveryReport]) -> None:
        while True:
            report = await reports.get()
            provider_id = (
                report.provider_message_id
                or hashlib.sha1(f"{report.conversation}:{report.detail}".encode()).hexdigest()
            )
            try:
                await self._bus.publish(
                    Inbound(
                        kind=InboundKind.DELIVERY,
                        channel=report.channel,
                        conversation=report.conversation,
                        sender=report.channel,
                        text=report.detail,
                        provider_message_id=f"delivery:{provider_id}:{report.status}",
                        extras={"status": report.status},
                    )
                )
            except Exception:
                log.exception("relay.delivery_report_dropped", report=report.model_dump())

    # --- helpers ------------------------------------------------------------------------

    async def _tell(
        self,
        conversation: Conversation,
        text: str,
        *,
        author: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Send to the customer on their channel, addressed like a reply to their latest
        message; a failure is recorded and reported in the agents' thread."""
        reply = Outbound(
            channel=conversation.channel,
            conversation=conversation.key,
            text=text,
            thread=conversation.reply_thread,
            author=author,
            role=Role.AGENT if author else Role.BOT,
            extras=conversation.reply_extras,
        )
        delivered = await deliver(
            self._channels.get(conversation.channel), self._store, reply, message_id=message_id
        )
        if delivered.failure is not None:
            await self._say_in_thread(
                conversation, f"{delivered.failure}. They did not get: {text}"
            )

    async def _already_sent(self, key: str, message_id: str) -> bool:
        latest = await self._store.transcript(key, last=3)
        return any(entry.message_id == message_id for entry in latest)

    async def _redraw(self, conversation: Conversation, agent: str | None) -> None:
        thread = _thread(conversation)
        if thread is None or not conversation.card:
            return
        card = EscalationCard.model_validate(conversation.card).model_copy(
            update={"mode": conversation.mode, "agent": conversation.agent or agent}
        )
        await self._quietly(self._console.update_card(thread, card))

    async def _say_in_thread(
        self, conversation: Conversation, text: str, *, mention: str | None = None
    ) -> None:
        thread = _thread(conversation)
        if thread is not None:
            await self._quietly(self._console.post(thread, text, mention=mention))

    async def _quietly(self, call: Any) -> None:
        """The agents' console is best effort once the state is decided: log a failure, go on."""
        try:
            await call
        except Exception:
            log.exception("relay.console_failed")
            metrics.ERRORS.labels("handoff").inc()

    async def _reschedule(self, conversation: Conversation) -> None:
        conversation.next_timer = self._next_timer(conversation)
        if conversation.next_timer is None:
            await self._store.unschedule(conversation.key)
        else:
            await self._store.schedule(conversation.key, conversation.next_timer)

    def _next_timer(self, conversation: Conversation) -> datetime | None:
        if conversation.mode is not Mode.WAITING or conversation.escalated_at is None:
            return None
        config = self._config
        offsets = [config.timeout, config.reminder_interval * (conversation.reminders_sent + 1)]
        if not conversation.pinged:
            offsets.append(config.unclaimed_ping_after)
        return conversation.escalated_at + timedelta(seconds=min(offsets))

    def _route(self, customer_channel: str, reason: Reason | None) -> str:
        for route in self._config.routes:
            if route.customer_channel in (None, customer_channel) and route.reason in (
                None,
                reason,
            ):
                return route.channel
        assert self._config.escalation_channel is not None  # the runtime builds no relay else
        return self._config.escalation_channel

    def _arrival_message(self, now: datetime) -> str:
        messages = self._config.messages
        hours = self._config.business_hours
        if hours is not None and (opens := next_opening(hours, now)) is not None:
            return messages.after_hours.format(opens=describe_opening(opens, now, hours))
        return messages.coming.format(wait=_duration(self._config.expected_wait))


def summarize(history: list[TranscriptEntry], reason: Reason | None) -> str:
    """Extractive: why, then the customer's latest few messages, each trimmed."""
    said = [entry.text for entry in history if entry.role is Role.CUSTOMER][-SUMMARY_MESSAGES:]
    why = reason.value.replace("_", " ") if reason else "escalated"
    quoted = [textwrap.shorten(text, SUMMARY_CHARS, placeholder=" …") for text in said]
    return "\n".join([f"Escalated ({why}). The customer wrote:", *(f"> {q}" for q in quoted)])


def next_opening(hours: BusinessHours, now: datetime) -> datetime | None:
    """None while the team is at work; else when it is next (in the business's time zone)."""
    local = now.astimezone(ZoneInfo(hours.timezone))
    open_days = {_WEEKDAYS.index(day) for day in hours.days}
    if local.weekday() in open_days and hours.start <= local.time() < hours.end:
        return None
    days = (local.date() + timedelta(days=ahead) for ahead in range(8))
    openings = (datetime.combine(day, hours.start, tzinfo=local.tzinfo) for day in days)
    return next(o for o in openings if o.weekday() in open_days and o > local)


def describe_opening(opens: datetime, now: datetime, hours: BusinessHours) -> str:
    """ "today at 09:00", "tomorrow at 09:00" or "on Monday at 09:00", with the time zone."""
    zone = ZoneInfo(hours.timezone)
    days = (opens.date() - now.astimezone(zone).date()).days
    day = {0: "today", 1: "tomorrow"}.get(days) or format_datetime(
        opens, "'on' EEEE", tzinfo=zone, locale="en"
    )
    return f"{day} at {format_datetime(opens, 'HH:mm', tzinfo=zone, locale='en')} ({zone.key})"


def _duration(seconds: float) -> str:
    return format_timedelta(timedelta(seconds=seconds), threshold=1.0, locale="en")


def _state(conversation: Conversation) -> State:
    return State(conversation.mode, agent_id=conversation.agent_id, agent=conversation.agent)


def _enter(conversation: Conversation, state: State, now: datetime) -> None:
    if state.mode is Mode.HUMAN and conversation.mode is not Mode.HUMAN:
        conversation.claimed_at = now
    conversation.mode, conversation.agent_id, conversation.agent = (
        state.mode,
        state.agent_id,
        state.agent,
    )


def _thread(conversation: Conversation) -> AgentThread | None:
    if conversation.agent_thread_channel is None or conversation.agent_thread_ts is None:
        return None
    return AgentThread(channel=conversation.agent_thread_channel, ts=conversation.agent_thread_ts)
