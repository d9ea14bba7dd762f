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


async def test_a_saved_response_is_kept_as_long_as_the_dedupe_mark(store_factory) -> None:
    store: Store = store_factory(dedupe_ttl=1)
    assert await store.saved_response("rest:key-1") is None
    await store.save_response("rest:key-1", '{"status": 200}')
    assert await store.saved_response("rest:key-1") == '{"status": 200}'
    await asyncio.sleep(1.2)
    assert await store.saved_response("rest:key-1") is None
