"""The dispatcher: strict order within a conversation, parallel across, nothing left behind."""

from __future__ import annotations

import asyncio
import random
import time

from gateway.ordering import ConversationDispatcher


async def test_one_conversation_is_processed_in_arrival_order() -> None:
    seen: list[int] = []

    async def handler(item: int) -> None:
        await asyncio.sleep(random.random() / 1000)
        seen.append(item)

    dispatcher: ConversationDispatcher[int] = ConversationDispatcher(handler, max_concurrency=8)
    for seq in range(200):
        dispatcher.submit("c1", seq, seq)
    await dispatcher.drain()
    assert seen == list(range(200))


async def test_conversations_run_in_parallel_under_the_cap() -> None:
    running = 0
    peak = 0

    async def handler(_item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    dispatcher: ConversationDispatcher[int] = ConversationDispatcher(handler, max_concurrency=50)
    started = time.perf_counter()
    for conversation in range(200):
        dispatcher.submit(f"c{conversation}", conversation, conversation)
    await dispatcher.drain()
    elapsed = time.perf_counter() - started
    assert peak == 50  # the global cap holds, and is reached
    # 200 conversations x 50 ms serialized would take 10 s; four waves of 50 take ~0.2 s.
    assert elapsed < 2.0, f"200 conversations took {elapsed:.2f}s: they were serialized"


async def test_no_mailbox_outlives_its_conversation() -> None:
    async def handler(_item: int) -> None:
        await asyncio.sleep(0)

    dispatcher: ConversationDispatcher[int] = ConversationDispatcher(handler, max_concurrency=4)
    for conversation in range(1000):
        dispatcher.submit(f"c{conversation}", 0, conversation)
    await dispatcher.drain()
    assert dispatcher.active_conversations == 0


async def test_a_failing_message_does_not_block_its_conversation() -> None:
    seen: list[int] = []

    async def handler(item: int) -> None:
        if item == 1:
            raise RuntimeError("boom")
        seen.append(item)

    dispatcher: ConversationDispatcher[int] = ConversationDispatcher(handler, max_concurrency=2)
    for seq in range(3):
        dispatcher.submit("c1", seq, seq)
    await dispatcher.drain()
    assert seen == [0, 2]


async def test_room_waits_while_too_many_messages_are_pending() -> None:
    release = asyncio.Event()
    handling = asyncio.Event()

    async def handler(_item: int) -> None:
        handling.set()
        await release.wait()

    dispatcher: ConversationDispatcher[int] = ConversationDispatcher(
        handler, max_concurrency=1, max_pending=3
    )
    for seq in range(3):
        dispatcher.submit("c1", seq, seq)
    waiting = asyncio.create_task(dispatcher.room())
    # Tasks start in the order they were created: by the time the first message is being
    # handled and this test runs again, `room()` has run up to where it waits, or returned.
    await asyncio.wait_for(handling.wait(), 5)
    assert not waiting.done()
    release.set()
    await asyncio.wait_for(waiting, 1)
    await dispatcher.drain()


async def test_a_late_earlier_message_jumps_ahead_of_later_ones() -> None:
    """A dead worker's message, claimed back, goes before the later ones already queued."""
    seen: list[int] = []

    async def handler(item: int) -> None:
        seen.append(item)

    dispatcher: ConversationDispatcher[int] = ConversationDispatcher(handler, max_concurrency=1)
    dispatcher.submit("c1", 5, 5)
    dispatcher.submit("c1", 3, 3)
    dispatcher.submit("c1", 4, 4)
    await dispatcher.drain()
    assert seen == [3, 4, 5]
