"""The conversation archive on real SQLite and a real PostgreSQL server: migrations (and an
upgrade of a database holding data), rows written once whatever is redelivered, the pipeline's
turns, hand-off events and tool calls archived off the reply's path, a database outage that
delays the archive and loses nothing, retention, erasure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, inspect, select
from typer.testing import CliRunner

from gateway import metrics
from gateway.app.cli import app
from gateway.app.processes import start_archive_writer
from gateway.app.settings import GatewayConfig
from gateway.archive import ArchiveEvent, Decided, EventKind
from gateway.archive.database import ArchiveDatabase, database_url
from gateway.archive.migrate import current, upgrade
from gateway.archive.queue import MemoryArchiveQueue
from gateway.archive.redis_queue import RedisArchiveQueue
from gateway.archive.schema import conversations, events, satisfaction, tool_calls, turns
from gateway.archive.writer import ArchiveWriter
from gateway.message import (
    Action,
    Conversation,
    InboundKind,
    Reason,
    Role,
    Source,
    ToolCallRecord,
    TranscriptEntry,
    conversation_key,
)
from gateway.store.redis import RedisStore
from tests.conftest import free_port
from tests.fakes import until
from tests.fakes.slack_api import FakeSlack
from tests.harness import Gateway
from tests.shop import running_shop, shop_config
from tests.test_handoff import (
    ASK_FOR_A_PERSON,
    DANA,
    DANA_NAME,
    Handoff,
    agent_event,
    backend,
    handoff_config,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def database(archive_url: str, tmp_path: Path) -> AsyncIterator[ArchiveDatabase]:
    archive = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(archive)
    yield archive
    await archive.close()


def turn(message_id: str, customer: str = "kim", *, at: datetime = NOW) -> ArchiveEvent:
    return ArchiveEvent(
        id=message_id,
        kind=EventKind.TURN,
        conversation=conversation_key("rest", customer),
        channel="rest",
        customer=customer,
        at=at,
        text="How do I descale my machine?",
        decision=Decided(
            action=Action.ANSWER,
            confidence=0.82,
            sources=(Source(source="kb/descaling.md", title="Descaling"),),
            latency_ms=120.5,
            replied=True,
        ),
    )


def handoff_event(event_id: str, kind: EventKind, customer: str = "kim") -> ArchiveEvent:
    return ArchiveEvent(
        id=event_id,
        kind=kind,
        conversation=conversation_key("rest", customer),
        channel="rest",
        customer=customer,
        at=NOW + timedelta(minutes=1),
        agent=DANA_NAME,
        score=5 if kind is EventKind.SATISFACTION else None,
    )


def tool_call(
    event_id: str,
    customer: str = "kim",
    *,
    at: datetime = NOW,
    outcome: str = "ok",
    status: int | None = 200,
) -> ArchiveEvent:
    return ArchiveEvent(
        id=event_id,
        kind=EventKind.TOOL_CALL,
        conversation=conversation_key("rest", customer),
        channel="rest",
        customer=customer,
        at=at,
        call=ToolCallRecord(
            tool="get_order",
            arguments={"order_id": "KC-1002", "email": f"{customer}@example.com"},
            outcome=outcome,
            status=status,
            latency_ms=42.5,
        ),
    )


async def count(archive: ArchiveDatabase, table: object) -> int:
    async with archive.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar())


async def test_migrations_create_the_tables_and_upgrading_again_changes_nothing(
    archive_url: str, tmp_path: Path
) -> None:
    archive = ArchiveDatabase(database_url(archive_url, tmp_path))
    try:
        assert (await current(archive))[0] is None
        await upgrade(archive)
        revision, head = await current(archive)
        assert revision == head is not None
        await upgrade(archive)
        assert await current(archive) == (revision, head)
        async with archive.engine.connect() as connection:
            names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert {"conversations", "turns", "events", "satisfaction", "tool_calls"} <= set(names)
    finally:
        await archive.close()


async def test_db_upgrade_adds_the_tool_calls_to_an_archive_holding_data(
    archive_url: str, tmp_path: Path
) -> None:
    """An archive at 0001 with a week of rows: `gateway db upgrade` takes it to 0002, keeps
    every row, and tool calls are written from then on."""
    archive = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(archive, "0001")
    await archive.write([turn("m1"), handoff_event("e1", EventKind.CLAIMED), turn("b1", "bob")])
    config = tmp_path / "gateway.yaml"
    config.write_text(f"data_dir: {tmp_path}\narchive:\n  database_url: {archive.url}\n")
    runner = CliRunner()
    behind = await asyncio.to_thread(runner.invoke, app, ["db", "current", "-c", str(config)])
    assert behind.exit_code == 1 and "revision 0001, newest 0002" in behind.output
    upgraded = await asyncio.to_thread(runner.invoke, app, ["db", "upgrade", "-c", str(config)])
    assert upgraded.exit_code == 0, upgraded.output
    assert "revision 0002" in upgraded.output
    now = await asyncio.to_thread(runner.invoke, app, ["db", "current", "-c", str(config)])
    assert now.exit_code == 0, now.output
    assert [await count(archive, table) for table in (conversations, turns, events)] == [2, 2, 1]
    await archive.write([tool_call("m1:call:0")])
    assert await count(archive, tool_calls) == 1
    await archive.close()


async def test_a_batch_written_twice_is_archived_once(database: ArchiveDatabase) -> None:
    batch = [
        turn("m1"),
        turn("m2", at=NOW + timedelta(seconds=30)),
        handoff_event("m2:escalated", EventKind.ESCALATED),
        handoff_event("e1", EventKind.CLAIMED),
        handoff_event("s1", EventKind.SATISFACTION),
        tool_call("m2:call:0"),
        tool_call("m2:call:1", outcome="timeout", status=None),
    ]
    await database.write(batch)
    await database.write(batch[1:])  # a redelivery after a crash before the acknowledgement
    await database.write(batch)
    tables = (conversations, turns, events, satisfaction, tool_calls)
    assert [await count(database, table) for table in tables] == [1, 2, 2, 1, 2]
    async with database.engine.connect() as connection:
        row = (await connection.execute(select(turns).where(turns.c.id == "m1"))).one()
    assert (row.action, row.confidence, row.latency_ms, row.replied) == (
        "answer",
        0.82,
        120.5,
        True,
    )
    assert row.sources == [{"source": "kb/descaling.md", "title": "Descaling"}]
    assert row.topic == "Descaling"
    async with database.engine.connect() as connection:
        calls = (await connection.execute(select(tool_calls).order_by(tool_calls.c.id))).all()
    assert [(call.tool, call.outcome, call.status, call.latency_ms) for call in calls] == [
        ("get_order", "ok", 200, 42.5),
        ("get_order", "timeout", None, 42.5),
    ]
    assert calls[0].arguments == {"order_id": "KC-1002", "email": "kim@example.com"}


# -- through the real pipeline -----------------------------------------------------------------


@asynccontextmanager
async def archiving(gw: Handoff) -> AsyncIterator[None]:
    """The worker's archive writer beside the harness's consumer (the embedded SQLite archive
    is migrated by it, as in `gateway worker`)."""
    writer = await start_archive_writer(gw.runtime)
    assert writer is not None
    try:
        yield
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


@pytest.mark.parametrize("bus", ["memory", "redis"])
async def test_turns_and_handoff_events_reach_the_archive_once(
    bus: str,
    archive_url: str,
    sample_data_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request.param = bus  # the shared `backend` helper reads the backend from the param
    redis_url = await backend(request, monkeypatch)
    archive = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(archive)
    async with FakeSlack(users={DANA: DANA_NAME}) as slack:
        config = handoff_config(sample_data_dir, slack, redis_url)
        config = config.model_copy(
            update={
                "archive": config.archive.model_copy(
                    update={"database_url": _secret(archive_url), "flush_interval": 0.05}
                )
            }
        )
        live = {kind: metrics.OUTCOMES.labels(kind, "rest") for kind in ("escalated", "resolved")}
        before = {kind: series._value.get() for kind, series in live.items()}
        async with Handoff.open(config, slack=slack) as gw, archiving(gw):
            answered = await gw.ask("kim", "Can I pause my subscription?")
            await gw.ask("kim", ASK_FOR_A_PERSON)
            key = conversation_key("rest", "kim")
            reply = agent_event(InboundKind.AGENT_REPLY, key, DANA, DANA_NAME, "Hi, Dana here.")
            await gw.publish(reply)
            await gw.publish(reply)  # a redelivery: the pipeline dedupes it
            await gw.publish(agent_event(InboundKind.RESOLVE, key, DANA, DANA_NAME))
            await gw.publish(agent_event(InboundKind.RESOLVE, key, DANA, DANA_NAME))  # refused

            async def archived() -> bool:
                return await count(archive, events) == 4 and await count(archive, turns) == 2

            await until(archived, within=15)
            customer_ids = [m.id for m in gw.traffic.published if m.kind is InboundKind.CUSTOMER]
    async with archive.engine.connect() as connection:
        rows = (await connection.execute(select(turns).order_by(turns.c.at))).all()
        kinds = (await connection.execute(select(events.c.kind, events.c.agent))).all()
    await archive.close()
    # The live Prometheus series count each transition once, the refused resolve not at all.
    assert {kind: series._value.get() - before[kind] for kind, series in live.items()} == {
        "escalated": 1,
        "resolved": 1,
    }
    assert [row.id for row in rows] == customer_ids
    assert rows[0].action == "answer" and rows[0].replied and rows[0].sources
    assert rows[0].latency_ms == answered["latency_ms"]
    assert (rows[1].action, rows[1].reason) == ("escalate", Reason.HUMAN_REQUESTED.value)
    expected = ["escalated", "claimed", "agent_reply", "resolved"]
    assert sorted(kinds) == sorted(
        (kind, None if kind == "escalated" else DANA_NAME) for kind in expected
    )


@pytest.mark.redis
async def test_a_turns_tool_calls_are_archived_once_even_when_it_is_processed_again(
    archive_url: str,
    redis: Redis,
    redis_url: str,
    sample_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sample procedures on the demo shop, on Redis: the turn that looked the order up
    writes one tool-call row; the same message processed again (its worker died after the
    reply, before marking it done) finds the same calls and writes no second row."""
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    archive = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(archive)
    async with running_shop() as shop:
        config = shop_config(shop.url, sample_data_dir, redis_url=redis_url)
        config = config.model_copy(
            update={
                "archive": config.archive.model_copy(
                    update={"database_url": _secret(archive_url), "flush_interval": 0.05}
                )
            }
        )
        written = metrics.ARCHIVE_WRITTEN._value.get()
        async with Gateway.open(config) as gw, archiving(gw):
            assert (
                "postcode"
                in (await gw.ask("kim", "Where is my order KC-1002?"))["replies"][0]["text"]
            )
            await gw.ask("kim", "SW1A 1AA")
            looked_up = [m for m in gw.traffic.published if m.kind is InboundKind.CUSTOMER][-1]
            await redis.delete(f"gw:processed:{looked_up.dedupe_key}")
            again = await gw.runtime.pipeline.handle(looked_up)
            assert again.decision.action is Action.ANSWER and not again.duplicate
            # 2 turns and 1 call, then the turn and its call again.
            await until(lambda: metrics.ARCHIVE_WRITTEN._value.get() - written >= 5, within=15)
    async with archive.engine.connect() as connection:
        [call] = (await connection.execute(select(tool_calls))).all()
    assert await count(archive, turns) == 2
    await archive.close()
    assert call.id == f"{looked_up.id}:call:0"
    assert (call.tool, call.outcome, call.status) == ("get_order", "ok", 200)
    assert call.arguments == {"order_id": "KC-1002", "postcode": "SW1A 1AA"}
    assert (call.conversation, call.customer) == (conversation_key("rest", "kim"), "kim")
    assert call.latency_ms > 0


def _secret(value: str) -> object:
    from pydantic import SecretStr

    return SecretStr(value)


# -- outages and crashes -----------------------------------------------------------------------


async def test_a_database_that_is_down_delays_the_archive_and_loses_nothing(
    database: ArchiveDatabase, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory mode, the writer in the process: every reply is sent while the writer fails
    (none waits for the database); a writer on a database that answers then writes every
    buffered event, once. (The child process's writer is the same ArchiveWriter on the same
    queue: tests/test_archive_child.py.)"""
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    down = f"postgresql://nobody@127.0.0.1:{free_port()}/archive"
    config = GatewayConfig(
        data_dir=sample_data_dir,
        archive={"database_url": down, "flush_interval": 0.05, "writer_process": False},
    )
    failures = metrics.ARCHIVE_FAILURES._value.get()
    written = metrics.ARCHIVE_WRITTEN._value.get()
    async with Gateway.open(config) as gw, archiving(gw):
        for n in range(5):
            answer = await gw.ask(f"c{n}", "Can I pause my subscription?")
            assert answer["replies"]
        await until(lambda: metrics.ARCHIVE_FAILURES._value.get() > failures)
        queue = gw.runtime.archive_queue
    assert metrics.ARCHIVE_WRITTEN._value.get() == written
    assert isinstance(queue, MemoryArchiveQueue)
    assert len(queue) == 5  # nothing acknowledged, nothing lost
    recovered = ArchiveWriter(
        queue, database, batch_size=2, flush_interval=0.05, retention=timedelta(days=365)
    )
    while await recovered.flush():
        pass
    assert await count(database, turns) == 5 and len(queue) == 0


async def test_a_stopping_worker_writes_what_its_in_process_writer_still_holds(
    archive_url: str, sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory mode, the writer in the process: cancelled while it waits between batches (as
    `gateway worker` stops it), it writes what came in meanwhile and then ends, instead of
    dropping it with the task."""
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    config = GatewayConfig(
        data_dir=sample_data_dir,
        archive={"database_url": archive_url, "flush_interval": 2.0, "writer_process": False},
    )
    archive = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(archive)  # PostgreSQL is migrated by `gateway db upgrade`, not the worker
    async with Gateway.open(config) as gw:
        writer = await start_archive_writer(gw.runtime)
        assert writer is not None
        queue = gw.runtime.archive_queue
        assert isinstance(queue, MemoryArchiveQueue)
        await gw.ask("c0", "Can I pause my subscription?")
        await until(lambda: len(queue) == 0)  # written; the writer now waits 2 s
        for n in (1, 2):
            await gw.ask(f"c{n}", "Can I pause my subscription?")
        assert len(queue) > 0
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        assert writer.cancelled() and len(queue) == 0
    assert await count(archive, turns) == 3
    await archive.close()


@pytest.mark.redis
async def test_a_writer_that_dies_mid_batch_leaves_it_to_another_once(
    database: ArchiveDatabase, redis: Redis
) -> None:
    """Redis mode: a batch taken and never acknowledged (the writer died before or after its
    commit) is claimed by a live writer after `claim_idle`; no row is doubled or missing."""
    crashed = RedisArchiveQueue(redis, consumer="worker-1", claim_idle=0.2)
    survivor = RedisArchiveQueue(redis, consumer="worker-2", claim_idle=0.2)
    for n in range(30):
        await crashed.put(turn(f"m{n}", customer=f"c{n % 7}", at=NOW + timedelta(seconds=n)))
    taken = await crashed.take(20, wait=0.1)
    await database.write(item.event for item in taken[:10])  # committed half, then died
    await asyncio.sleep(0.3)
    writer = ArchiveWriter(
        survivor, database, batch_size=8, flush_interval=0.05, retention=timedelta(days=365)
    )
    while await writer.flush():
        pass
    assert await count(database, turns) == 30
    assert await redis.xlen("gw:archive") == 0
    assert await crashed.take(20, wait=0.05) == []  # its old entries are gone, not redone


async def test_retention_deletes_what_is_older(database: ArchiveDatabase) -> None:
    old = NOW - timedelta(days=400)
    await database.write(
        [
            turn("old", customer="ann", at=old),
            tool_call("old:call:0", customer="ann", at=old),
            turn("new", customer="bob"),
            tool_call("new:call:0", customer="bob"),
        ]
    )
    deleted = await database.purge(NOW - timedelta(days=365))
    assert deleted == 3  # ann's turn, her tool call and her conversation
    assert await count(database, turns) == 1 and await count(database, conversations) == 1
    assert await count(database, tool_calls) == 1


@pytest.mark.redis
async def test_erase_removes_one_customer_from_the_archive_store_and_transcripts(
    redis_url: str, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive_url = f"sqlite+aiosqlite:///{tmp_path / 'archive.sqlite3'}"
    archive = ArchiveDatabase(archive_url)
    await upgrade(archive)
    await archive.write(
        [
            turn("k1"),
            handoff_event("k2", EventKind.SATISFACTION),
            tool_call("k1:call:0"),
            turn("b1", customer="bob"),
            tool_call("b1:call:0", customer="bob"),
        ]
    )
    store = RedisStore(redis, dedupe_ttl=86_400, conversation_ttl=86_400)
    for customer in ("kim", "bob"):
        key = conversation_key("rest", customer)
        await store.save(Conversation(key=key, channel="rest", customer=customer))
        await store.append(key, TranscriptEntry(role=Role.CUSTOMER, text="hello"))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", archive_url)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    result = await asyncio.to_thread(CliRunner().invoke, app, ["erase", "--customer", "kim"])
    assert result.exit_code == 0, result.output
    assert "1 conversation(s)" in result.output
    kim, bob = conversation_key("rest", "kim"), conversation_key("rest", "bob")
    assert await store.load(kim) is None and await store.transcript(kim) == []
    assert await store.load(bob) is not None and len(await store.transcript(bob)) == 1
    async with archive.engine.connect() as connection:
        left = (await connection.execute(select(turns.c.customer))).scalars().all()
        calls = (await connection.execute(select(tool_calls.c.customer))).scalars().all()
    assert left == ["bob"] and await count(archive, satisfaction) == 0
    assert calls == ["bob"]
    await archive.close()
