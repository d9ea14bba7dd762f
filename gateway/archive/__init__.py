"""The conversation archive: what happened, kept in a database for reports.

The pipeline records each turn and each hand-off transition as an `ArchiveEvent` on an
`ArchiveQueue` (an append to memory, or an XADD to a Redis stream) and moves on; a batched
writer (`gateway/archive/writer.py`) takes events off the queue, inserts them into the database
and only then acknowledges them. So a slow or down database delays the archive, never a reply.

Every event has an id derived from the message or event it records, and every table has that id
as its unique key, inserted with ON CONFLICT DO NOTHING: a redelivered event (a worker died
after its batch committed, before it acknowledged) is written once.

This package's `__init__` and `queue` modules are the only ones the pipeline loads; the
database side (SQLAlchemy) loads with the writer, the report and the CLI.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from gateway.message import Action, Model, Reason, Source, ToolCallRecord


class EventKind(StrEnum):
    TURN = "turn"  # a customer's message and the bot's decision on it
    ESCALATED = "escalated"  # the agents' thread opened; the customer waits for a person
    CLAIMED = "claimed"
    AGENT_REPLY = "agent_reply"
    RESOLVED = "resolved"
    HANDED_BACK = "handed_back"
    TIMED_OUT = "timed_out"  # nobody claimed it in time: back with the bot
    DELIVERY_FAILED = "delivery_failed"
    SATISFACTION = "satisfaction"  # the customer's answer to the satisfaction ask
    TOOL_CALL = "tool_call"  # a call to the business's API made for a turn


class Decided(Model):
    """A turn's decision, as archived."""

    action: Action
    reason: Reason | None = None
    confidence: float = 0.0
    sources: tuple[Source, ...] = ()
    latency_ms: float = 0.0
    replied: bool = False  # the customer got a reply to this message


class ArchiveEvent(Model):
    id: str  # unique: the message id, or the event id with its kind
    kind: EventKind
    conversation: str
    channel: str
    customer: str
    at: datetime
    # The customer's message (turns), an agent's reply, the agents' thread of an escalation
    # (`channel:ts`), the delivery failure's detail.
    text: str = ""
    agent: str | None = None  # agents' events
    decision: Decided | None = None  # turns
    score: int | None = None  # satisfaction, 1 to 5
    call: ToolCallRecord | None = None  # tool calls
