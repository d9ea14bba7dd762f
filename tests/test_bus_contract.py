"""One contract, two buses: the in-process queue and Redis Streams behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from gateway.bus import Bus, Keep
from gateway.message import Action, Decision, Inbound, TurnResult
from gateway.redis_client import connect_redis
from gateway.results import RECHECK_SECONDS, TurnResults
from tests.backends import BACKENDS, make_bus, queued_ids


def message(conversation: str, n: int) -> Inbound:
    return Inbound(
        channel="test",
        conversation=conversation,
        sender="customer",
        text=f"message {n}",
        provider_message_id=f"{conversation}-{n}",
    )


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Redis | None]]:
    if request.param == "memory":
        yield request.param, None
        return
    client = connect_redis(request.getfixturevalue("redis_url"))
    await client.flushdb()
    yield request.param, client
    await client.aclose()


@contextlib.asynccontextmanager
async def consuming(bus: Bus, handler: Callable[[Inbound], Awaitable[None]]) -> AsyncIterator[None]:
    task = asyncio.create_task(bus.consume(handler))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()


async def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_200_concurrent_messages_of_one_conversation_keep_arrival_order(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis)
    messages = [message("c1", n) for n in range(200)]
    await asyncio.gather(*(bus.publish(m) for m in messages))
    arrival = await queued_ids(bus, redis)
    assert sorted(arrival) == sorted(m.id for m in messages)

    handled: list[str] = []

    async def handler(m: Inbound) -> None:
        await asyncio.sleep(random.random() / 500)
        handled.append(m.id)

    async with consuming(bus, handler):
        await wait_for(lambda: len(handled) == 200)
    assert handled == arrival


async def test_200_conversations_are_not_serialized_behind_each_other(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis, max_concurrency=64)
    done: list[str] = []

    async def handler(m: Inbound) -> None:
        await asyncio.sleep(0.1)
        done.append(m.conversation)

    async with consuming(bus, handler):
        started = time.perf_counter()
        await asyncio.gather(*(bus.publish(message(f"c{i}", 0)) for i in range(200)))
        await wait_for(lambda: len(done) == 200)
        elapsed = time.perf_counter() - started
    # Serialized, 200 x 100 ms would be 20 s; with 64 at a time it is four waves (~0.4 s).
    print(f"\n{name}: 200 conversations x 100 ms handler in {elapsed:.2f}s")
    assert elapsed < 3.0


async def test_interleaved_conversations_each_keep_their_order(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis, max_concurrency=8)
    handled: dict[str, list[int]] = defaultdict(list)

    async def handler(m: Inbound) -> None:
        await asyncio.sleep(random.random() / 200)
        handled[m.conversation].append(int(m.text.split()[1]))

    async with consuming(bus, handler):
        for n in range(30):
            for conversation in ("a", "b", "c", "d", "e"):
                await bus.publish(message(conversation, n))
        await wait_for(lambda: sum(map(len, handled.values())) == 150)
    assert all(sequence == list(range(30)) for sequence in handled.values())


async def test_broadcast_reaches_subscribers(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis)
    received: list[dict] = []
    patterns = await redis.pubsub_numpat() if redis is not None else 0
    bus.subscribe("news", received.append)
    if redis is not None:  # the Redis subscription is established in the background
        async with asyncio.timeout(5):
            while await redis.pubsub_numpat() == patterns:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    await bus.broadcast("news", {"hello": "world"})
    await wait_for(lambda: received == [{"hello": "world"}], seconds=5)
    await bus.close()


async def test_a_failing_handler_does_not_stop_the_conversation(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis)
    handled: list[int] = []

    async def handler(m: Inbound) -> None:
        n = int(m.text.split()[1])
        if n == 1:
            raise RuntimeError("a bug in the handler")
        handled.append(n)

    async with consuming(bus, handler):
        for n in range(3):
            await bus.publish(message("c1", n))
        await wait_for(lambda: handled == [0, 2])


async def test_a_kept_broadcast_can_be_recalled_until_it_expires(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis)
    await bus.broadcast("news", {"n": 1}, keep=Keep("news:1", 0.5))
    assert await bus.recall("news:1") == {"n": 1}
    assert await bus.recall("news:2") is None
    deadline = time.monotonic() + 3
    while await bus.recall("news:1") is not None:
        assert time.monotonic() < deadline, "a kept payload outlived its time"
        await asyncio.sleep(0.05)
    await bus.close()


def turn_result(message_id: str, *, duplicate: bool = False) -> TurnResult:
    return TurnResult(
        message_id=message_id,
        conversation="rest:c1",
        replies=() if duplicate else ("the answer",),
        decision=Decision(action=Action.ANSWER),
        latency_ms=1.0,
        duplicate=duplicate,
    )


async def test_a_waiter_gets_a_result_whose_broadcast_it_missed(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis)
    results = TurnResults(bus)
    await results.publish(turn_result("m1"))  # before anyone waits: the broadcast is missed
    with results.expect("m1") as result:
        turn = await asyncio.wait_for(result, RECHECK_SECONDS * 3)
    assert turn.replies == ("the answer",)
    await bus.close()


async def test_a_duplicate_resolves_with_the_original_result(backend) -> None:
    name, redis = backend
    bus = make_bus(name, redis)
    results = TurnResults(bus)
    await results.publish(turn_result("m1"))
    with results.expect("m1") as first, results.expect("m1") as retry:
        assert first is retry  # a retry in flight shares the first attempt's wait
        await results.publish(turn_result("m1", duplicate=True))
        turn = await asyncio.wait_for(retry, 5)
    assert not turn.duplicate and turn.replies == ("the answer",)
    await bus.close()
