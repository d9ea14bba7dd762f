"""Redis-only guarantees: order across workers, and a dead worker's messages taken over."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

from redis.asyncio import Redis

from gateway.bus.redis import GROUP, STREAM, RedisBus
from gateway.message import Inbound
from gateway.redis_client import connect_redis
from tests.test_bus_contract import message, wait_for


async def test_two_workers_keep_each_conversation_in_order(redis_url: str) -> None:
    clients = [connect_redis(redis_url) for _ in range(3)]
    await clients[0].flushdb()
    publisher, *workers = clients
    producer = RedisBus(publisher, max_concurrency=16, claim_idle=30, conversation_ttl=3600)
    handled: dict[str, list[int]] = defaultdict(list)
    counts: Counter[str] = Counter()

    async def handler(m: Inbound) -> None:
        await asyncio.sleep(random.random() / 100)
        handled[m.conversation].append(int(m.text.split()[1]))
        counts[m.id] += 1

    buses = [
        RedisBus(client, max_concurrency=16, claim_idle=30, conversation_ttl=3600, consumer=f"w{i}")
        for i, client in enumerate(workers)
    ]
    tasks = [asyncio.create_task(bus.consume(handler)) for bus in buses]
    try:
        for n in range(40):
            for conversation in ("a", "b", "c", "d", "e"):
                await producer.publish(message(conversation, n))
        await wait_for(lambda: sum(counts.values()) >= 200, seconds=30)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bus in (*buses, producer):
            await bus.close()
        for client in clients:
            await client.aclose()
    assert all(sequence == list(range(40)) for sequence in handled.values())
    assert set(counts.values()) == {1}


async def test_messages_left_pending_by_a_dead_worker_are_claimed(redis: Redis) -> None:
    producer = RedisBus(redis, max_concurrency=4, claim_idle=0.5, conversation_ttl=3600)
    for n in range(5):
        await producer.publish(message("c1", n))
    # A worker that read the messages and died: they sit in its pending list, unacknowledged.
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    await redis.xreadgroup(GROUP, "dead-worker", {STREAM: ">"}, count=10)
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 5

    handled: list[int] = []

    async def handler(m: Inbound) -> None:
        handled.append(int(m.text.split()[1]))

    survivor = RedisBus(
        redis, max_concurrency=4, claim_idle=0.5, conversation_ttl=3600, consumer="survivor"
    )
    task = asyncio.create_task(survivor.consume(handler))
    try:
        await wait_for(lambda: len(handled) == 5, seconds=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await survivor.close()
    assert handled == [0, 1, 2, 3, 4]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
