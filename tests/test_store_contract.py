"""One contract, two stores: memory and Redis keep state, transcripts and dedupe marks alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.message import Conversation, Mode, Role, TranscriptEntry
from gateway.redis_client import connect_redis
from gateway.store import Store
from tests.backends import BACKENDS, make_store


@pytest.fixture(params=BACKENDS)
async def store_factory(request: pytest.FixtureRequest) -> AsyncIterator:
    if request.param == "memory":
        yield lambda **options: make_store("memory", None, **options)
        return
    client = connect_redis(request.getfixturevalue("redis_url"))
    await client.flushdb()
    yield lambda **options: make_store("redis", client, **options)
    await client.aclose()


async def test_a_new_message_id_is_not_processed_until_marked(store_factory) -> None:
    store: Store = store_factory()
    assert not await store.is_processed("telegram:1")
    await store.mark_processed("telegram:1")
    assert await store.is_processed("telegram:1")
    assert not await store.is_processed("telegram:2")


async def test_dedupe_marks_expire_after_their_ttl(store_factory) -> None:
    store: Store = store_factory(dedupe_ttl=1)
    await store.mark_processed("slack:Ev1")
    await asyncio.sleep(1.2)
    assert not await store.is_processed("slack:Ev1")


async def test_conversation_state_round_trips(store_factory) -> None:
    store: Store = store_factory()
    assert await store.load("rest:alice") is None
    conversation = Conversation(key="rest:alice", channel="rest", customer="alice")
    conversation.mode = Mode.WAITING
    await store.save(conversation)
    loaded = await store.load("rest:alice")
    assert loaded is not None
    assert loaded.mode is Mode.WAITING and loaded.customer == "alice"


async def test_transcript_is_append_only_and_ordered(store_factory) -> None:
    store: Store = store_factory()
    for n in range(5):
        await store.append("rest:bob", TranscriptEntry(role=Role.CUSTOMER, text=f"m{n}"))
    assert [entry.text for entry in await store.transcript("rest:bob")] == [
        f"m{n}" for n in range(5)
    ]
    assert [entry.text for entry in await store.transcript("rest:bob", last=2)] == ["m3", "m4"]


async def test_two_customers_never_share_a_transcript(store_factory) -> None:
    store: Store = store_factory()
    await store.append("rest:alice", TranscriptEntry(role=Role.CUSTOMER, text="alice's secret"))
    await store.append("rest:bob", TranscriptEntry(role=Role.CUSTOMER, text="bob's question"))
    assert [entry.text for entry in await store.transcript("rest:bob")] == ["bob's question"]
    assert await store.transcript("rest:carol") == []


async def test_an_agents_thread_leads_back_to_its_conversation(store_factory) -> None:
    store: Store = store_factory()
    assert await store.thread_conversation("C0ESC:1700000000.000100") is None
    await store.save(Conversation(key="telegram:42", channel="telegram"))
    await store.link_thread("C0ESC:1700000000.000100", "telegram:42")
    assert await store.thread_conversation("C0ESC:1700000000.000100") == "telegram:42"


async def test_scheduled_conversations_fall_due_in_time_order(store_factory) -> None:
    store: Store = store_factory()
    base = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    await store.schedule("rest:late", base + timedelta(seconds=30))
    await store.schedule("rest:early", base + timedelta(seconds=10))
    await store.schedule("rest:future", base + timedelta(hours=1))
    assert await store.due(base, limit=10) == []
    due = await store.due(base + timedelta(minutes=1), limit=10)
    assert due == [
        ("rest:early", base + timedelta(seconds=10)),
        ("rest:late", base + timedelta(seconds=30)),
    ]
    assert await store.due(base + timedelta(minutes=1), limit=1) == [due[0]]


async def test_a_due_timer_stays_due_until_rescheduled_or_unscheduled(store_factory) -> None:
    store: Store = store_factory()
    base = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    await store.schedule("rest:a", base)
    await store.schedule("rest:b", base)
    assert len(await store.due(base, limit=10)) == 2  # due() does not consume
    await store.schedule("rest:a", base + timedelta(minutes=5))  # replaces a's earlier time
    await store.unschedule("rest:b")
    await store.unschedule("rest:never-scheduled")
    assert await store.due(base + timedelta(minutes=1), limit=10) == []
    assert await store.due(base + timedelta(minutes=5), limit=10) == [
        ("rest:a", base + timedelta(minutes=5))
    ]
    assert await store.scheduled("rest:a") == base + timedelta(minutes=5)
    assert await store.scheduled("rest:b") is None


async def test_a_loaded_conversation_changes_the_store_only_when_saved(store_factory) -> None:
    store: Store = store_factory()
    await store.save(Conversation(key="rest:alice", channel="rest"))
    loaded = await store.load("rest:alice")
    assert loaded is not None
    loaded.mode = Mode.HUMAN
    loaded.reply_extras["chat"] = 1
    unsaved = await store.load("rest:alice")
    assert unsaved is not None and unsaved.mode is Mode.BOT and unsaved.reply_extras == {}
    await store.save(loaded)
    saved = await store.load("rest:alice")
    assert saved is not None and saved.mode is Mode.HUMAN


async def test_a_quota_counts_uses_per_key_within_its_window(store_factory) -> None:
    store: Store = store_factory()
    assert await store.within_quota("email-replies:ann@example.com", 2, 60.0)
    assert await store.within_quota("email-replies:ann@example.com", 2, 60.0)
    assert not await store.within_quota("email-replies:ann@example.com", 2, 60.0)
    assert await store.within_quota("email-replies:bob@example.com", 2, 60.0)


async def test_a_quota_opens_again_when_its_window_passes(store_factory) -> None:
    store: Store = store_factory()
    assert await store.within_quota("k", 1, 0.3)
    assert not await store.within_quota("k", 1, 0.3)
    await asyncio.sleep(0.4)
    assert await store.within_quota("k", 1, 0.3)


async def test_workers_on_one_redis_share_a_quota(redis_url: str) -> None:
    first, second = connect_redis(redis_url), connect_redis(redis_url)
    await first.flushdb()
    stores = [make_store("redis", client) for client in (first, second)]
    assert await stores[0].within_quota("email-replies:ann@example.com", 2, 60.0)
    assert await stores[1].within_quota("email-replies:ann@example.com", 2, 60.0)
    assert not await stores[0].within_quota("email-replies:ann@example.com", 2, 60.0)
    await first.aclose()
    await second.aclose()


# -- the memory store's bounds (Redis bounds itself: maxmemory and key TTLs) -------------------


async def test_memory_store_evicts_the_least_recently_written_conversation_past_its_count() -> None:
    from structlog.testing import capture_logs

    from gateway.store.memory import MemoryStore

    store = MemoryStore(dedupe_ttl=86_400, conversation_ttl=3600, max_conversations=2)
    for name in ("a", "b"):
        await store.save(Conversation(key=f"rest:{name}", channel="rest"))
    await store.append("rest:a", TranscriptEntry(role=Role.CUSTOMER, text="still here?"))
    with capture_logs() as logs:
        await store.save(Conversation(key="rest:c", channel="rest"))

    assert await store.load("rest:b") is None  # written before "a" was written again
    assert await store.load("rest:a") is not None and await store.load("rest:c") is not None
    assert [entry["event"] for entry in logs] == ["store.evicted"]
    assert logs[0]["conversations"] == 1


async def test_memory_store_evicts_past_its_memory_bound_but_keeps_the_newest() -> None:
    from gateway.store.memory import MemoryStore

    store = MemoryStore(dedupe_ttl=86_400, conversation_ttl=3600, max_bytes=20_000)
    for n in range(10):
        entry = TranscriptEntry(role=Role.CUSTOMER, text="x" * 5_000)
        await store.append(f"rest:{n}", entry)
    kept = [n for n in range(10) if await store.transcript(f"rest:{n}")]
    assert kept == [7, 8, 9]  # three 5 kB entries (and their JSON) fit in 20 kB, four do not

    await store.append("rest:huge", TranscriptEntry(role=Role.CUSTOMER, text="y" * 50_000))
    assert len(store) == 1 and await store.transcript("rest:huge")


async def test_a_saved_response_is_kept_as_long_as_the_dedupe_mark(store_factory) -> None:
    store: Store = store_factory(dedupe_ttl=1)
    assert await store.saved_response("rest:key-1") is None
    await store.save_response("rest:key-1", '{"status": 200}')
    assert await store.saved_response("rest:key-1") == '{"status": 200}'
    await asyncio.sleep(1.2)
    assert await store.saved_response("rest:key-1") is None
