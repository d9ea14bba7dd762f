"""Contacts and their outcomes: the definitions the report counts (see README, "Outcomes").

A *contact* is one stretch of a conversation: it starts with a customer's message after more
than `resolution_window` of silence (or the conversation's first), and holds the turns,
hand-off events and satisfaction answers until the next one starts. Each contact gets exactly
one outcome:

- `resolved_by_agent`: escalated, and an agent marked it resolved;
- `abandoned`: escalated, and nobody claimed it (it timed out, or the customer gave up: the
  window passed with no claim);
- `escalated`: escalated, otherwise (claimed and not resolved yet, handed back, still waiting);
- `confirmed`: not escalated, and the customer rated it well (4 or 5);
- `assumed`: not escalated, not rated, its last turn was a bot answer, and no further message
  came within `resolution_window`;
- `unresolved`: not escalated, and rated 1 to 3, or its last turn was no answer;
- `pending`: not escalated, and its window has not passed yet (too early to assume anything).

A contact is a *repeat* when the same customer had another contact on the same topic (the
knowledge page the bot's first answer drew on) that started within `repeat_window` before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class Outcome(StrEnum):
    CONFIRMED = "confirmed"
    ASSUMED = "assumed"
    RESOLVED_BY_AGENT = "resolved_by_agent"
    ABANDONED = "abandoned"
    ESCALATED = "escalated"
    UNRESOLVED = "unresolved"
    PENDING = "pending"


GOOD_SCORE = 4  # a rating this high or higher confirms a resolution


@dataclass(frozen=True, slots=True)
class TurnRow:
    conversation: str
    channel: str
    customer: str
    at: datetime
    action: str
    reason: str | None
    topic: str | None
    latency_ms: float
    replied: bool


@dataclass(frozen=True, slots=True)
class EventRow:
    conversation: str
    kind: str  # gateway.archive.EventKind, or "satisfaction"
    at: datetime
    agent: str | None = None
    score: int | None = None


@dataclass(slots=True)
class Contact:
    conversation: str
    channel: str
    customer: str
    start: datetime
    turns: list[TurnRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    outcome: Outcome = Outcome.PENDING
    repeat: bool = False

    @property
    def topic(self) -> str | None:
        return next((turn.topic for turn in self.turns if turn.replied and turn.topic), None)

    @property
    def escalation_reason(self) -> str | None:
        """Why it was escalated (its first escalating turn's reason); None if it was not."""
        turn = next((turn for turn in self.turns if turn.action == "escalate"), None)
        return (turn.reason or "unknown") if turn is not None else None

    @property
    def first_response_ms(self) -> float | None:
        turn = next((turn for turn in self.turns if turn.replied), None)
        if turn is None:
            return None
        return (turn.at - self.start).total_seconds() * 1000 + turn.latency_ms

    def first(self, kind: str) -> datetime | None:
        return next((event.at for event in self.events if event.kind == kind), None)

    @property
    def scores(self) -> list[int]:
        return [event.score for event in self.events if event.score is not None]


def contacts(
    turns: Iterable[TurnRow],
    events: Iterable[EventRow],
    *,
    window: timedelta,
    repeat_window: timedelta,
    now: datetime,
) -> list[Contact]:
    """Every contact of these rows, with its outcome and repeat flag, in start order."""
    by_conversation: defaultdict[str, list[Contact]] = defaultdict(list)
    for turn in sorted(turns, key=lambda turn: turn.at):
        started = by_conversation[turn.conversation]
        if not started or turn.at - _last_activity(started[-1]) > window:
            started.append(Contact(turn.conversation, turn.channel, turn.customer, turn.at))
        started[-1].turns.append(turn)
    for event in sorted(events, key=lambda event: event.at):
        begun = by_conversation.get(event.conversation)
        if not begun:
            continue  # its turns are before the period
        owner = next((c for c in reversed(begun) if c.start <= event.at), begun[0])
        owner.events.append(event)
    every = sorted((c for cs in by_conversation.values() for c in cs), key=lambda c: c.start)
    for contact in every:
        contact.outcome = _outcome(contact, window=window, now=now)
    _mark_repeats(every, repeat_window)
    return every


def _last_activity(contact: Contact) -> datetime:
    return contact.turns[-1].at


def _outcome(contact: Contact, *, window: timedelta, now: datetime) -> Outcome:
    last = max([contact.turns[-1].at, *(event.at for event in contact.events)])
    if contact.escalation_reason is not None:
        if contact.first("resolved") is not None:
            return Outcome.RESOLVED_BY_AGENT
        claimed = contact.first("claimed") is not None
        if not claimed and (contact.first("timed_out") is not None or now - last > window):
            return Outcome.ABANDONED
        return Outcome.ESCALATED
    if scores := contact.scores:
        return Outcome.CONFIRMED if max(scores) >= GOOD_SCORE else Outcome.UNRESOLVED
    if now - contact.turns[-1].at <= window:
        return Outcome.PENDING
    final = contact.turns[-1]
    return Outcome.ASSUMED if final.action == "answer" and final.replied else Outcome.UNRESOLVED


def _mark_repeats(every: list[Contact], repeat_window: timedelta) -> None:
    latest: dict[tuple[str, str], datetime] = {}  # (customer, topic) -> latest contact start
    for contact in every:  # in start order
        topic = contact.topic
        if topic is None or not contact.customer:
            continue
        key = (contact.customer, topic)
        previous = latest.get(key)
        contact.repeat = previous is not None and contact.start - previous <= repeat_window
        latest[key] = contact.start
