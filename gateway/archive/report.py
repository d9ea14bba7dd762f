"""The operator's report over a period: computed from the archive, as JSON-ready figures.

Everything is counted per contact (see `gateway/archive/outcomes.py` for the definitions);
confirmed and assumed resolutions are always reported apart. The topics are the period's
questions grouped by meaning (gateway/archive/clusters.py), when the report is given the
embedder.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from pydantic import BaseModel
from sqlalchemy import case, func, select

from gateway.archive.clusters import Embed, central, distinctive_terms, embed_all, group
from gateway.archive.database import ArchiveDatabase
from gateway.archive.outcomes import Contact, EventRow, Outcome, TurnRow, contacts
from gateway.archive.schema import as_utc, events, satisfaction, tool_calls, turns

TOP = 10
# Turns in which the bot could not answer (gateway.message's failed turns).
UNANSWERED_REASONS = ("low_confidence", "model_unavailable", "repeated_failure", "pipeline_error")
# Tool outcomes that answered (brain.tools.ToolResult.failed): a 2xx, or the API's own no. The
# others (failed, timeout, refused, invalid) left the customer without an answer: tool_failed.
ANSWERED_OUTCOMES = ("ok", "rejected")
# Distinct questions clustered at most, the most asked first: the embedding is the cost.
MAX_QUESTIONS = 2000
EXAMPLES = 3


class Percentiles(BaseModel):
    count: int
    p50: float | None
    p95: float | None


class Rate(BaseModel):
    count: int
    rate: float  # of all contacts in the period


class Satisfaction(BaseModel):
    answers: int
    average: float
    scores: dict[str, int]  # "1" to "5" -> answers


class ToolUse(BaseModel):
    calls: int
    outcomes: dict[str, int]  # ok, rejected, failed, timeout, refused, invalid -> calls
    failed: int  # calls with an outcome not in ANSWERED_OUTCOMES
    latency_ms: Percentiles


class ToolFailure(BaseModel):
    at: datetime
    tool: str
    outcome: str
    status: int | None
    conversation: str


class ToolCalls(BaseModel):
    calls: int
    failed: int
    by_tool: dict[str, ToolUse]  # most called first
    failures: list[ToolFailure]  # the latest TOP failed calls, newest first


class Topic(BaseModel):
    name: str  # its most distinctive words, or a short name from Claude
    terms: list[str]
    questions: int  # customers' messages in the period
    unanswered: int  # of them, the bot could not answer
    examples: list[str]  # the most typical wording first, then the most asked


# Short human names for topics (brain/topic_names.py, with Claude); None keeps the words.
NameTopics = Callable[[Sequence[Topic]], Awaitable[Sequence[str] | None]]


class Report(BaseModel):
    since: datetime
    until: datetime
    contacts: int
    messages: int
    volume: dict[str, dict[str, int]]  # day (ISO) -> channel -> contacts started
    outcomes: dict[str, int]  # every Outcome, zero included
    automation: dict[str, Rate]  # confirmed, assumed: apart, always
    escalations: dict[str, Rate]  # by reason
    first_response_seconds: dict[str, Percentiles]  # by channel
    first_response_all_seconds: Percentiles  # every channel together
    time_to_claim_seconds: Percentiles
    time_to_resolve_seconds: Percentiles
    agents: dict[str, dict[str, int]]  # agent -> claimed, replies, resolved
    satisfaction: Satisfaction
    repeat_contacts: Rate
    top_topics: list[tuple[str, int]]  # the knowledge pages the answers drew on
    top_unanswered: list[tuple[str, int]]
    tool_calls: ToolCalls
    topics: list[Topic] = []  # the questions by meaning, the most asked first


async def build_report(
    database: ArchiveDatabase,
    *,
    since: timedelta,
    window: timedelta,
    repeat_window: timedelta,
    now: datetime | None = None,
    embed: Embed | None = None,
    topic_similarity: float = 0.35,
    name_topics: NameTopics | None = None,
) -> Report:
    """`embed`: the gateway's embedder, for the topics (none without it); `name_topics`: short
    names for them (else their distinctive words)."""
    until = now or datetime.now(UTC)
    start = until - since
    # Contacts that began before the period still count as the earlier contact of a repeat;
    # nothing after `until` is read, so a past period reads as it stood at its end.
    turn_rows, event_rows, unanswered = await _load(database, start - repeat_window, start, until)
    every = contacts(turn_rows, event_rows, window=window, repeat_window=repeat_window, now=until)
    period = [contact for contact in every if contact.start >= start]
    report = _summarize(period, start, until, unanswered, await _tool_calls(database, start, until))
    if embed is not None:
        questions = await _questions(database, start, until)
        report.topics = await topics(questions, embed, similarity=topic_similarity)
    if name_topics is not None and report.topics:
        names = await name_topics(report.topics)
        for topic, name in zip(report.topics, names or (), strict=False):
            topic.name = name
    return report


async def _questions(
    database: ArchiveDatabase, start: datetime, until: datetime
) -> list[tuple[str, int, int]]:
    """The period's questions to the bot: (text, times asked, times unanswered), most asked
    first; the same words in another case or spacing are one question."""
    question = func.lower(func.trim(turns.c.text))
    failed = func.sum(case((turns.c.reason.in_(UNANSWERED_REASONS), 1), else_=0))
    async with database.engine.connect() as connection:
        rows = await connection.execute(
            select(question, func.count(), failed)
            .where(turns.c.at.between(start, until), turns.c.action != "human", question != "")
            .group_by(question)
            .order_by(func.count().desc(), question)
            .limit(MAX_QUESTIONS)
        )
        return [(text, int(times), int(unanswered or 0)) for text, times, unanswered in rows]


async def topics(
    questions: list[tuple[str, int, int]], embed: Embed, *, similarity: float
) -> list[Topic]:
    """The `TOP` most asked topics of (text, times, unanswered) questions."""
    if not questions:
        return []
    texts = [text for text, _, _ in questions]
    vectors = await embed_all(embed, texts)
    # The clustering is CPU work: off the event loop of a web process serving /admin/report.
    grouped = await asyncio.to_thread(group, vectors, similarity=similarity)
    groups = sorted(grouped, key=lambda rows: -sum(questions[row][1] for row in rows))[:TOP]
    terms = await asyncio.to_thread(
        distinctive_terms,
        [[texts[row] for row in rows] for rows in groups],
        [[questions[row][1] for row in rows] for rows in groups],
    )
    found = []
    for rows, words in zip(groups, terms, strict=True):
        typical = central(vectors, rows)
        asked = [typical, *(row for row in rows if row != typical)]  # rows: most asked first
        found.append(
            Topic(
                name=" · ".join(words) or texts[typical],
                terms=words,
                questions=sum(questions[row][1] for row in rows),
                unanswered=sum(questions[row][2] for row in rows),
                examples=[texts[row] for row in asked[:EXAMPLES]],
            )
        )
    return found


async def _load(
    database: ArchiveDatabase, loaded_from: datetime, start: datetime, until: datetime
) -> tuple[list[TurnRow], list[EventRow], list[tuple[str, int]]]:
    async with database.engine.connect() as connection:
        turn_result = await connection.execute(
            select(
                turns.c.conversation,
                turns.c.channel,
                turns.c.customer,
                turns.c.at,
                turns.c.action,
                turns.c.reason,
                turns.c.topic,
                turns.c.latency_ms,
                turns.c.replied,
            ).where(turns.c.at >= loaded_from, turns.c.at <= until)
        )
        turn_rows = [TurnRow(r[0], r[1], r[2], as_utc(r[3]), *r[4:]) for r in turn_result]
        event_result = await connection.execute(
            select(events.c.conversation, events.c.kind, events.c.at, events.c.agent).where(
                events.c.at >= loaded_from, events.c.at <= until
            )
        )
        event_rows = [EventRow(r[0], r[1], as_utc(r[2]), r[3]) for r in event_result]
        score_result = await connection.execute(
            select(satisfaction.c.conversation, satisfaction.c.at, satisfaction.c.score).where(
                satisfaction.c.at >= loaded_from, satisfaction.c.at <= until
            )
        )
        event_rows += [
            EventRow(r[0], "satisfaction", as_utc(r[1]), score=r[2]) for r in score_result
        ]
        question = func.lower(func.trim(turns.c.text))
        unanswered = await connection.execute(
            select(question, func.count())
            .where(turns.c.at.between(start, until), turns.c.reason.in_(UNANSWERED_REASONS))
            .group_by(question)
            .order_by(func.count().desc(), question)
            .limit(TOP)
        )
        return turn_rows, event_rows, [(text, count) for text, count in unanswered]


def _summarize(
    period: list[Contact],
    start: datetime,
    until: datetime,
    unanswered: list[tuple[str, int]],
    calls: ToolCalls,
) -> Report:
    total = len(period)

    def rate(count: int) -> Rate:
        return Rate(count=count, rate=round(count / total, 4) if total else 0.0)

    outcomes = Counter(contact.outcome for contact in period)
    volume: defaultdict[str, Counter[str]] = defaultdict(Counter)
    first_response: defaultdict[str, list[float]] = defaultdict(list)
    claim_waits, resolve_waits = [], []
    agents: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for contact in period:
        volume[contact.start.date().isoformat()][contact.channel] += 1
        if (first := contact.first_response_ms) is not None:
            first_response[contact.channel].append(first / 1000)
        escalated = contact.first("escalated")
        if escalated is not None:
            if (claimed := contact.first("claimed")) is not None:
                claim_waits.append((claimed - escalated).total_seconds())
            if (resolved := contact.first("resolved")) is not None:
                resolve_waits.append((resolved - escalated).total_seconds())
        for event in contact.events:
            if event.agent and event.kind in ("claimed", "agent_reply", "resolved"):
                agents[event.agent][_AGENT_COLUMNS[event.kind]] += 1
    scores = [score for contact in period for score in contact.scores]
    reasons = Counter(r for contact in period if (r := contact.escalation_reason) is not None)
    return Report(
        since=start,
        until=until,
        contacts=total,
        messages=sum(len(contact.turns) for contact in period),
        volume={day: dict(volume[day]) for day in sorted(volume)},
        outcomes={outcome.value: outcomes[outcome] for outcome in Outcome},
        automation={
            "confirmed": rate(outcomes[Outcome.CONFIRMED]),
            "assumed": rate(outcomes[Outcome.ASSUMED]),
        },
        escalations={reason: rate(count) for reason, count in reasons.most_common()},
        first_response_seconds={
            channel: _percentiles(values) for channel, values in sorted(first_response.items())
        },
        first_response_all_seconds=_percentiles(
            seconds for values in first_response.values() for seconds in values
        ),
        time_to_claim_seconds=_percentiles(claim_waits),
        time_to_resolve_seconds=_percentiles(resolve_waits),
        agents={
            agent: {column: load[column] for column in _AGENT_COLUMNS.values()}
            for agent, load in sorted(agents.items())
        },
        satisfaction=Satisfaction(
            answers=len(scores),
            average=round(sum(scores) / len(scores), 2) if scores else 0.0,
            scores={str(score): scores.count(score) for score in range(1, 6)},
        ),
        repeat_contacts=rate(sum(contact.repeat for contact in period)),
        top_topics=Counter(topic for contact in period if (topic := contact.topic)).most_common(
            TOP
        ),
        top_unanswered=unanswered,
        tool_calls=calls,
    )


_AGENT_COLUMNS = {"claimed": "claimed", "agent_reply": "replies", "resolved": "resolved"}


async def _tool_calls(database: ArchiveDatabase, start: datetime, until: datetime) -> ToolCalls:
    """The calls to the business's API in the period: by tool and outcome, latency, failures."""
    async with database.engine.connect() as connection:
        result = await connection.execute(
            select(
                tool_calls.c.tool,
                tool_calls.c.outcome,
                tool_calls.c.status,
                tool_calls.c.latency_ms,
                tool_calls.c.at,
                tool_calls.c.conversation,
            ).where(tool_calls.c.at >= start, tool_calls.c.at <= until)
        )
        rows = result.all()
    outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
    latencies: defaultdict[str, list[float]] = defaultdict(list)
    failures: list[ToolFailure] = []
    for tool, outcome, status, latency_ms, at, conversation in rows:
        outcomes[tool][outcome] += 1
        latencies[tool].append(latency_ms)
        if outcome not in ANSWERED_OUTCOMES:
            failures.append(
                ToolFailure(
                    at=as_utc(at),
                    tool=tool,
                    outcome=outcome,
                    status=status,
                    conversation=conversation,
                )
            )
    by_tool = {
        tool: ToolUse(
            calls=sum(counts.values()),
            outcomes=dict(counts.most_common()),
            failed=sum(n for outcome, n in counts.items() if outcome not in ANSWERED_OUTCOMES),
            latency_ms=_percentiles(latencies[tool]),
        )
        for tool, counts in sorted(outcomes.items(), key=lambda item: (-item[1].total(), item[0]))
    }
    failures.sort(key=lambda failure: failure.at, reverse=True)
    return ToolCalls(
        calls=len(rows), failed=len(failures), by_tool=by_tool, failures=failures[:TOP]
    )


def _percentiles(values: Iterable[float]) -> Percentiles:
    data = np.fromiter(values, dtype=float)
    if not data.size:
        return Percentiles(count=0, p50=None, p95=None)
    p50, p95 = np.percentile(data, [50, 95])
    return Percentiles(count=int(data.size), p50=round(float(p50), 3), p95=round(float(p95), 3))
