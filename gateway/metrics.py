"""Prometheus metrics: what operators graph and alert on."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from gateway.archive import ArchiveEvent, EventKind
from gateway.message import TurnResult

MESSAGES = Counter("gateway_messages_total", "Messages processed", ["channel"])
DUPLICATES = Counter("gateway_duplicates_total", "Redelivered messages skipped", ["channel"])
DECISIONS = Counter("gateway_decisions_total", "Decisions taken", ["action", "reason"])
ERRORS = Counter("gateway_errors_total", "Errors by pipeline stage", ["stage"])
SEARCHES_DROPPED = Counter(
    "gateway_searches_dropped_total",
    "Searches dropped before their embedding: the caller had gone, or the deadline passed",
    ["why"],
)
REJECTED = Counter(
    "gateway_rejected_total",
    "Requests turned away by admission control (429 or 503, with Retry-After)",
    ["channel"],
)
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 10.0)
TOOL_CALLS = Counter(
    "gateway_tool_calls_total", "Calls to the business's API tools", ["tool", "outcome"]
)
TOOL_LATENCY = Histogram(
    "gateway_tool_latency_seconds",
    "From a tool call's start to its answer",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)
LATENCY = Histogram(
    "gateway_turn_latency_seconds",
    "From receipt of a message to its complete reply being sent",
    ["channel"],
    buckets=_BUCKETS,
)
FIRST_RESPONSE = Histogram(
    "gateway_first_response_seconds",
    "From receipt of a message to the first text of its turn the customer saw (a streamed "
    "first sentence, a holding line, or the whole reply)",
    ["channel"],
    buckets=_BUCKETS,
)


def observe_turn(channel: str, result: TurnResult) -> None:
    if result.duplicate:
        DUPLICATES.labels(channel).inc()
        return
    MESSAGES.labels(channel).inc()
    DECISIONS.labels(result.decision.action.value, result.decision.reason or "none").inc()
    LATENCY.labels(channel).observe(result.latency_ms / 1000)
    if result.first_response_ms is not None:
        FIRST_RESPONSE.labels(channel).observe(result.first_response_ms / 1000)


# The archive (gateway/archive/): live outcome and satisfaction series; the report has the rest.
OUTCOMES = Counter(
    "gateway_outcomes_total",
    "Hand-off outcomes as they happen: escalated, claimed, resolved (by an agent), handed "
    "back, timed out (abandoned while waiting); assumed resolutions need the report's window",
    ["outcome", "channel"],
)
SATISFACTION = Counter(
    "gateway_satisfaction_answers_total",
    "Satisfaction answers by score (1-5)",
    ["score", "channel"],
)
DIGESTS = Counter(
    "gateway_digests_total",
    "Weekly digests to the agents' channel (gateway/weekly.py): posted, or failed (retried)",
    ["outcome"],
)
SATISFACTION_ASKS = Counter(
    "gateway_satisfaction_asks_total",
    "Satisfaction asks sent, by what prompted them (agent: resolved; bot: an answer met with "
    "silence)",
    ["trigger", "channel"],
)
ARCHIVE_WRITTEN = Counter("gateway_archive_written_total", "Archive events committed")
ARCHIVE_FAILURES = Counter(
    "gateway_archive_write_failures_total", "Archive batches that failed to commit (retried)"
)
ARCHIVE_DROPPED = Counter(
    "gateway_archive_dropped_total",
    "Archive events dropped from a full in-memory buffer (no Redis, database down for long)",
)

# Archived events that are not hand-off outcomes (tool calls have their own series above).
_NOT_OUTCOMES = frozenset(
    {EventKind.TURN, EventKind.AGENT_REPLY, EventKind.DELIVERY_FAILED, EventKind.TOOL_CALL}
)


def observe_archived(event: ArchiveEvent) -> None:
    if event.kind is EventKind.SATISFACTION and event.score is not None:
        SATISFACTION.labels(str(event.score), event.channel).inc()
    elif event.kind not in _NOT_OUTCOMES:
        OUTCOMES.labels(event.kind.value, event.channel).inc()
