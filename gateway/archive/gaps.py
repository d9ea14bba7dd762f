"""Content gaps: questions the bot could not answer from the knowledge base and a person did.

A gap opens with a customer's turn escalated for want of an answer (`GAP_REASONS`; a model
outage or a pipeline error is no gap in the docs), gathers that conversation's further such
turns, and takes the text of every agent reply (archived with the reply, see
`gateway/archive/recorder.py`) until the hand-off ends (resolved, handed back, timed out) or
a new escalation starts another. A gap no agent answered is left out: it stays in the
report's unanswered questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from gateway.archive import EventKind
from gateway.archive.database import ArchiveDatabase
from gateway.archive.schema import as_utc, events, turns

GAP_REASONS = ("low_confidence", "repeated_failure")
_ENDS = frozenset({EventKind.RESOLVED, EventKind.HANDED_BACK, EventKind.TIMED_OUT})


@dataclass(slots=True)
class Gap:
    conversation: str
    channel: str
    customer: str
    asked_at: datetime
    turns: list[str] = field(default_factory=list)  # the escalated turns' ids
    questions: list[str] = field(default_factory=list)  # as the customer wrote them
    answers: list[str] = field(default_factory=list)  # the agents' replies, in order
    agents: list[str] = field(default_factory=list)
    thread: str = ""  # the agents' thread, `channel:ts` (empty if none was opened)

    @property
    def answer(self) -> str:
        return "\n\n".join(self.answers)


@dataclass(frozen=True, slots=True)
class _Asked:
    id: str
    conversation: str
    channel: str
    customer: str
    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class _Happened:
    at: datetime
    kind: EventKind
    agent: str | None
    detail: str


async def find_gaps(database: ArchiveDatabase, since: datetime) -> list[Gap]:
    """The answered gaps that opened since `since`, oldest first."""
    unanswered = (turns.c.at >= since) & turns.c.reason.in_(GAP_REASONS)
    async with database.engine.connect() as connection:
        asked = [
            _Asked(row.id, row.conversation, row.channel, row.customer, as_utc(row.at), row.text)
            for row in await connection.execute(select(turns).where(unanswered))
        ]
        timelines: dict[str, list[_Asked | _Happened]] = {}
        for question in asked:
            timelines.setdefault(question.conversation, []).append(question)
        happened = await connection.execute(
            select(events).where(
                events.c.conversation.in_(select(turns.c.conversation).where(unanswered)),
                events.c.at >= since,
            )
        )
        for row in happened:
            timelines[row.conversation].append(
                _Happened(as_utc(row.at), EventKind(row.kind), row.agent, row.detail)
            )
    # An event at a turn's instant comes after it: the turn's own escalation.
    gaps = [
        gap
        for timeline in timelines.values()
        for gap in _gaps(sorted(timeline, key=lambda e: (e.at, isinstance(e, _Happened))))
    ]
    return sorted((gap for gap in gaps if gap.answers), key=lambda gap: gap.asked_at)


def _gaps(timeline: list[_Asked | _Happened]) -> list[Gap]:
    found: list[Gap] = []
    current: Gap | None = None
    escalated = False  # the current gap's hand-off began
    for entry in timeline:
        if isinstance(entry, _Asked):
            if current is None or current.answers:  # a new question after an agent answered
                current = Gap(entry.conversation, entry.channel, entry.customer, entry.at)
                escalated = False
                found.append(current)
            current.turns.append(entry.id)
            current.questions.append(entry.text.strip())
        elif current is None:
            continue
        elif entry.kind is EventKind.ESCALATED:
            if escalated:  # another hand-off, for a reason that is no gap
                current = None
                continue
            escalated, current.thread = True, entry.detail
        elif entry.kind is EventKind.AGENT_REPLY and entry.detail.strip():
            current.answers.append(entry.detail.strip())
            if entry.agent and entry.agent not in current.agents:
                current.agents.append(entry.agent)
        elif entry.kind in _ENDS:
            current = None
    return found
