"""The archive's database: SQLite under `data_dir` by default, PostgreSQL with DATABASE_URL."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, event, exists, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.archive import ArchiveEvent, EventKind
from gateway.archive.schema import (
    BY_CUSTOMER,
    conversations,
    events,
    satisfaction,
    tool_calls,
    turns,
)

SQLITE_FILE = "archive.sqlite3"


def database_url(configured: str | None, data_dir: Path) -> str:
    """The SQLAlchemy async URL: `postgres://` and `postgresql://` (as platforms set
    DATABASE_URL) use asyncpg; nothing configured means SQLite in `data_dir`."""
    if configured is None:
        return f"sqlite+aiosqlite:///{data_dir / SQLITE_FILE}"
    for scheme in ("postgres://", "postgresql://"):
        if configured.startswith(scheme):
            return "postgresql+asyncpg://" + configured.removeprefix(scheme)
    return configured


class ArchiveDatabase:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def write(self, batch: Iterable[ArchiveEvent]) -> None:
        """One transaction; a row whose id is already there is skipped."""
        rows: defaultdict[Table, list[dict[str, Any]]] = defaultdict(list)
        started: dict[str, dict[str, Any]] = {}
        for item in batch:
            table, row = _row(item)
            rows[table].append(row)
            first = started.get(item.conversation)
            if first is None or item.at < first["started_at"]:
                started[item.conversation] = {
                    "key": item.conversation,
                    "channel": item.channel,
                    "customer": item.customer,
                    "started_at": item.at,
                }
        async with self.engine.begin() as connection:
            if started:
                await connection.execute(self._insert(conversations), list(started.values()))
            for table, values in rows.items():
                await connection.execute(self._insert(table), values)

    def _insert(self, table: Table) -> Any:
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        return insert(table).on_conflict_do_nothing()

    async def purge(self, before: datetime) -> int:
        """Retention: delete what happened before `before`; returns the rows deleted."""
        async with self.engine.begin() as connection:
            deleted = 0
            for table in BY_CUSTOMER:
                result = await connection.execute(delete(table).where(table.c.at < before))
                deleted += result.rowcount
            deleted += await _drop_empty_conversations(connection, before)
        return deleted

    async def erase_customer(self, customer: str) -> list[str]:
        """Delete every row of `customer`; returns their conversation keys (for the store)."""
        async with self.engine.begin() as connection:
            keys = set(
                (
                    await connection.execute(
                        select(conversations.c.key).where(conversations.c.customer == customer)
                    )
                ).scalars()
            )
            for table in BY_CUSTOMER:
                keys.update(
                    (
                        await connection.execute(
                            select(table.c.conversation).where(table.c.customer == customer)
                        )
                    ).scalars()
                )
                await connection.execute(
                    delete(table).where(
                        (table.c.customer == customer) | table.c.conversation.in_(keys)
                    )
                )
            await connection.execute(delete(conversations).where(conversations.c.key.in_(keys)))
        return sorted(keys)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _row(item: ArchiveEvent) -> tuple[Table, dict[str, Any]]:
    common = {
        "id": item.id,
        "conversation": item.conversation,
        "channel": item.channel,
        "customer": item.customer,
        "at": item.at,
    }
    if item.kind is EventKind.TURN:
        assert item.decision is not None
        decided = item.decision
        return turns, common | {
            "text": item.text,
            "action": decided.action.value,
            "reason": decided.reason.value if decided.reason else None,
            "confidence": decided.confidence,
            "sources": [source.model_dump() for source in decided.sources],
            "topic": decided.sources[0].title if decided.sources else None,
            "latency_ms": decided.latency_ms,
            "replied": decided.replied,
        }
    if item.kind is EventKind.SATISFACTION:
        assert item.score is not None
        return satisfaction, common | {"score": item.score}
    if item.kind is EventKind.TOOL_CALL:
        assert item.call is not None
        call = item.call
        return tool_calls, common | {
            "tool": call.tool,
            "arguments": call.arguments,
            "outcome": call.outcome,
            "status": call.status,
            "latency_ms": call.latency_ms,
        }
    return events, common | {"kind": item.kind.value, "agent": item.agent, "detail": item.text}


async def _drop_empty_conversations(connection: AsyncConnection, before: datetime) -> int:
    started_before = conversations.c.started_at < before
    still_used = [
        exists().where(table.c.conversation == conversations.c.key) for table in BY_CUSTOMER
    ]
    result = await connection.execute(
        delete(conversations).where(started_before, *(~used for used in still_used))
    )
    return result.rowcount


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """WAL: the report reads while a worker writes; a writer waits for another's lock."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
