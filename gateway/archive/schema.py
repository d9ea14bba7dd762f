"""The archive's tables (SQLAlchemy Core). Each row's `id` is its event's id: the unique key
that makes a redelivered event a no-op (INSERT ... ON CONFLICT DO NOTHING).

Times are UTC; SQLite hands them back naive (`as_utc` fixes that)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

KEY = 255  # conversation keys, customer ids, event ids: provider ids with a prefix


def _common(*columns: Column[object]) -> list[Column[object]]:
    return [
        Column("id", String(KEY), primary_key=True),
        Column("conversation", String(KEY), nullable=False, index=True),
        Column("channel", String(32), nullable=False),
        Column("customer", String(KEY), nullable=False, index=True),
        Column("at", DateTime(timezone=True), nullable=False, index=True),
        *columns,
    ]


conversations = Table(
    "conversations",
    metadata,
    Column("key", String(KEY), primary_key=True),
    Column("channel", String(32), nullable=False),
    Column("customer", String(KEY), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
)

turns = Table(
    "turns",
    metadata,
    *_common(
        Column("text", Text, nullable=False),
        Column("action", String(16), nullable=False),
        Column("reason", String(32)),
        Column("confidence", Float, nullable=False),
        Column("sources", JSON, nullable=False),
        Column("topic", String(KEY)),  # the top source's title: what the answer drew on
        Column("latency_ms", Float, nullable=False),
        Column("replied", Boolean, nullable=False),
    ),
)

# Hand-off transitions and delivery failures.
events = Table(
    "events",
    metadata,
    *_common(
        Column("kind", String(16), nullable=False),
        Column("agent", String(KEY)),
        Column("detail", Text, nullable=False),
    ),
)

satisfaction = Table(
    "satisfaction",
    metadata,
    *_common(Column("score", Integer, nullable=False)),
)

# The calls to the business's API made for a turn (`id`: the turn's message id and the call's
# place among that turn's calls); `arguments` holds what the verified identity filled in.
tool_calls = Table(
    "tool_calls",
    metadata,
    *_common(
        Column("tool", String(KEY), nullable=False),
        Column("arguments", JSON, nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("status", Integer),
        Column("latency_ms", Float, nullable=False),
    ),
)

Index("ix_turns_conversation_at", turns.c.conversation, turns.c.at)
Index("ix_events_conversation_at", events.c.conversation, events.c.at)

# Every table that holds a customer's data, for retention and erasure.
BY_CUSTOMER = (turns, events, satisfaction, tool_calls)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
