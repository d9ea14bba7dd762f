"""Two real `gateway worker` processes on Redis; one is killed with SIGKILL while it holds
messages. The survivor finishes them: over 1,000 messages none is lost, none answered twice,
every conversation's transcript is in the order its messages were sent, and the archive (on a
real PostgreSQL, as in production) holds each turn exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import select

from gateway.archive import redis_queue
from gateway.archive.database import ArchiveDatabase, database_url
from gateway.archive.migrate import upgrade
from gateway.archive.schema import conversations, turns
from gateway.bus.redis import GROUP, STREAM, RedisBus
from gateway.message import Inbound, Role
from gateway.redis_client import connect_redis
from gateway.store.redis import RedisStore
from tests.fakes import until
from tests.postgres_process import fresh_database

CONVERSATIONS = 50
PER_CONVERSATION = 20
TOTAL = CONVERSATIONS * PER_CONVERSATION
CLAIM_IDLE = 2.0


def start_worker(
    config: Path, redis_url: str, log: Path, **environment: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **environment, "REDIS_URL": redis_url, "GATEWAY_CONFIG": str(config)}
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.app", "worker"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent.parent,
            process_group=0,
        )


async def processed_count(redis: Redis) -> int:
    return len([key async for key in redis.scan_iter("gw:processed:*", count=1000)])


async def test_a_killed_worker_loses_nothing_and_doubles_nothing(
    redis_url: str, postgres_url: str, sample_data_dir: Path, tmp_path: Path
) -> None:
    archive = ArchiveDatabase(database_url(await fresh_database(postgres_url), tmp_path))
    await upgrade(archive)  # the release process's `gateway db upgrade`
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"data_dir: {sample_data_dir}\n"
        f"pipeline: {{claim_idle: {CLAIM_IDLE}, max_concurrency: 16}}\n"
        "archive: {flush_interval: 0.2}\n"
        "knowledge: {sources: []}\nlogging: {level: info, format: json}\n"
    )
    redis = connect_redis(redis_url)
    await redis.flushdb()
    publisher = RedisBus(redis, max_concurrency=1, claim_idle=30, conversation_ttl=3600)
    victim = start_worker(config, redis_url, tmp_path / "victim.log", DATABASE_URL=archive.url)
    survivor = start_worker(config, redis_url, tmp_path / "survivor.log", DATABASE_URL=archive.url)
    sent: dict[str, list[str]] = defaultdict(list)
    held_at_death = 0
    try:
        await until(lambda: _started(tmp_path / "victim.log", tmp_path / "survivor.log"), 60)
        # Publish while both workers run, so both take messages; kill the victim the moment
        # it holds some, mid-stream.
        for n in range(PER_CONVERSATION):
            for c in range(CONVERSATIONS):
                message = Inbound(
                    channel="rest",
                    conversation=f"rest:customer-{c}",
                    sender=f"customer-{c}",
                    text=f"How much does shipping to Canada cost? ({n})",
                    provider_message_id=f"{c}-{n}",
                )
                await publisher.publish(message)
                sent[message.conversation].append(message.id)
            mid_stream = n >= PER_CONVERSATION // 4 and _answered(tmp_path / "victim.log") > 0
            if victim.poll() is None and mid_stream and await _holds_messages(redis, victim.pid):
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
                held_at_death = await _pending_of(redis, victim.pid)
            await asyncio.sleep(0.2)
        assert victim.poll() is not None, "the victim never held a message to be killed with"
        assert held_at_death > 0, "the victim held no message when it was killed"
        await until(lambda: _all_processed(redis), 180)
        # A late duplicate could only come from an entry still held: none is, so none can.
        await until(lambda: _none_pending(redis), 60)
        # The victim's archive entries taken and not written are the survivor's after
        # claim_idle; the stream is empty once every batch committed.
        await until(lambda: _archive_drained(redis), 60)
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)

    store = RedisStore(redis, dedupe_ttl=86_400, conversation_ttl=3600)
    for conversation, message_ids in sent.items():
        transcript = await store.transcript(conversation)
        customer = [e.message_id for e in transcript if e.role is Role.CUSTOMER]
        # A holding line ("One moment…") and the answer after it are one turn.
        replies = [e.in_reply_to for e in transcript if e.role is Role.BOT and not e.holding]
        assert customer == message_ids, f"{conversation}: lost, doubled or reordered"
        assert replies == message_ids, f"{conversation}: a reply lost or doubled"
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    async with archive.engine.connect() as connection:
        archived = list((await connection.execute(select(turns.c.id))).scalars())
        keys = set((await connection.execute(select(conversations.c.key))).scalars())
    await archive.close()
    assert len(archived) == TOTAL, f"{len(archived)} turns archived of {TOTAL}"
    assert set(archived) == {id_ for ids in sent.values() for id_ in ids}
    assert keys == set(sent)
    answered_by_victim = _answered(tmp_path / "victim.log")
    assert answered_by_victim > 0
    print(
        f"\nkilled a worker that had answered {answered_by_victim} and held {held_at_death} "
        f"messages; all {TOTAL} answered exactly once, in order, and archived once"
    )
    await redis.aclose()


async def _holds_messages(redis: Redis, pid: int) -> bool:
    """Poll briefly: a worker holds what it read until each message is answered."""
    for _ in range(200):
        if await _pending_of(redis, pid) > 0:
            return True
        await asyncio.sleep(0.002)
    return False


def _answered(log: Path) -> int:
    return log.read_text().count('"pipeline.turn"')


async def _started(*logs: Path) -> bool:
    # Redis registers a consumer only once it receives an entry, so readiness is read from
    # the workers' own log line.
    return all("gateway.started" in log.read_text() for log in logs)


async def _consumer_of(redis: Redis, pid: int) -> str | None:
    for consumer in await redis.xinfo_consumers(STREAM, GROUP):
        name = (
            consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
        )
        if f"-{pid}-" in name:
            return name
    return None


async def _pending_of(redis: Redis, pid: int) -> int:
    consumer = await _consumer_of(redis, pid)
    if consumer is None:
        return 0
    return len(await redis.xpending_range(STREAM, GROUP, "-", "+", 10_000, consumername=consumer))


async def _archive_drained(redis: Redis) -> bool:
    return bool(await redis.exists(redis_queue.STREAM)) and not await redis.xlen(redis_queue.STREAM)


async def _none_pending(redis: Redis) -> bool:
    return (await redis.xpending(STREAM, GROUP))["pending"] == 0


async def _all_processed(redis: Redis) -> bool:
    return await processed_count(redis) >= TOTAL
