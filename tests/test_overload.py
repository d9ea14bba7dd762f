"""Overload: work for callers that have gone is dropped, and what cannot be served is refused.

Retrieval drops searches whose caller was cancelled or whose deadline passed before they cost
an embedding; a message that waited past its deadline gets the holding reply without a search;
REST and the web chat are turned away beyond `pipeline.max_in_flight` while provider webhooks
are still taken onto the bus, until the bus itself stops taking messages.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from adapters.telegram import SECRET_HEADER, WEBHOOK_PATH, TelegramConfig
from brain.embedder import DEFAULT_EMBEDDER, Embedder, Kind, load_embedder
from brain.knowledge import SEARCH_LANES, KnowledgeBase
from gateway.admission import Admission
from gateway.app.http import build_app
from gateway.app.runtime import Runtime, open_knowledge
from gateway.app.settings import ChannelsConfig, GatewayConfig
from gateway.bus.memory import MemoryBus
from gateway.config import PipelineConfig
from gateway.message import Inbound, Reason, TurnResult, conversation_key, utcnow
from gateway.redis_client import connect_redis
from gateway.results import TurnResults
from gateway.store.memory import MemoryStore
from tests.backends import queued_ids
from tests.conftest import SAMPLE_KB, backend
from tests.fakes import until
from tests.fakes.telegram_api import SECRET, TOKEN, FakeTelegram, private_message
from tests.harness import Gateway, working

PRICING = "How much is the Duo plan in the UK?"


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# Retrieval: searches whose caller has gone are never embedded


class HeldEmbedder:
    """The real embedder, with its first calls (one per search lane) held until the test lets
    them go: the searches that arrive meanwhile queue for the next batch, as they do behind a
    busy CPU."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self.name, self.dimensions = embedder.name, embedder.dimensions
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.to_hold = 0
        self.held = 0  # calls held so far
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        with self._lock:
            hold = self.held < self.to_hold
            self.held += hold
        if hold:
            assert self.release.wait(10)
        with self._lock:
            self.calls.append(list(texts))
        return self._embedder.embed(texts, kind)

    @property
    def after_the_busy_lanes(self) -> list[list[str]]:
        """The calls made once the held ones were let go."""
        return self.calls[SEARCH_LANES:]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(DEFAULT_EMBEDDER)


@pytest.fixture
def held(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[KnowledgeBase, HeldEmbedder]]:
    wrapped = HeldEmbedder(embedder)
    knowledge = KnowledgeBase(tmp_path / "data", embedder=wrapped)
    knowledge.ingest([SAMPLE_KB])
    wrapped.calls.clear()
    wrapped.to_hold = SEARCH_LANES
    yield knowledge, wrapped
    wrapped.release.set()
    knowledge.close()


async def every_lane_is_embedding(knowledge: KnowledgeBase, held: HeldEmbedder) -> Awaitable[Any]:
    """Every search lane busy with a held batch (one search each: started together, they would
    share one batch); awaiting the result awaits those batches."""
    busy = []
    for lane in range(SEARCH_LANES):
        busy.append(asyncio.create_task(knowledge.search(f"batch {lane} being embedded")))
        await until(lambda: held.held > lane)  # noqa: B023 (awaited before the next lane)
    return asyncio.gather(*busy)


async def test_a_search_whose_caller_was_cancelled_is_not_embedded(
    held: tuple[KnowledgeBase, HeldEmbedder],
) -> None:
    knowledge, embedder = held
    first = await every_lane_is_embedding(knowledge, embedder)
    gone = asyncio.create_task(knowledge.search("a customer who timed out"))
    kept = asyncio.create_task(knowledge.search(PRICING))
    await until(lambda: len(knowledge._queries) == 2)
    dropped = counter("gateway_searches_dropped_total", why="cancelled")
    gone.cancel()

    embedder.release.set()
    await first
    passages = await kept
    assert gone.cancelled()
    assert embedder.after_the_busy_lanes == [[PRICING]]
    assert passages[0].source == "subscription-plans-and-pricing.md"
    assert counter("gateway_searches_dropped_total", why="cancelled") == dropped + 1


async def test_a_search_still_queued_at_its_deadline_times_out_unembedded(
    held: tuple[KnowledgeBase, HeldEmbedder],
) -> None:
    knowledge, embedder = held
    first = await every_lane_is_embedding(knowledge, embedder)
    loop = asyncio.get_running_loop()
    late = asyncio.create_task(knowledge.search("too late", deadline=loop.time() + 0.05))
    await until(lambda: len(knowledge._queries) == 1)
    await asyncio.sleep(0.1)  # past the late search's deadline, while the batch still runs

    embedder.release.set()
    await first
    with pytest.raises(TimeoutError):
        await late
    assert embedder.after_the_busy_lanes == []


async def test_after_a_burst_the_next_search_is_in_the_very_next_batch(
    held: tuple[KnowledgeBase, HeldEmbedder],
) -> None:
    """A burst whose callers all timed out leaves no backlog: the next customer's search is the
    only one embedded after the batch that was running, so it is answered at idle speed."""
    knowledge, embedder = held
    first = await every_lane_is_embedding(knowledge, embedder)
    burst = [asyncio.create_task(knowledge.search(f"burst question {n}")) for n in range(200)]
    await until(lambda: len(knowledge._queries) == 200)
    for search in burst:
        search.cancel()
    after = asyncio.create_task(knowledge.search(PRICING))

    embedder.release.set()
    await first
    assert (await after)[0].source == "subscription-plans-and-pricing.md"
    assert embedder.after_the_busy_lanes == [[PRICING]]
    assert not knowledge._queries


# A message that waited past its deadline


async def test_a_message_older_than_the_deadline_gets_the_holding_reply_without_a_search(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = gateway.runtime
    searched: list[str] = []
    search = runtime.knowledge.search

    async def recording_search(query: str, k: int = 5, **options: Any) -> Any:
        searched.append(query)
        return await search(query, k, **options)

    monkeypatch.setattr(runtime.knowledge, "search", recording_search)
    brain = runtime.config.brain

    async def turn(text: str, waited: float) -> TurnResult:
        message = Inbound(
            channel="rest",
            conversation=conversation_key("rest", f"waited-{waited}"),
            sender="ada",
            text=text,
            provider_message_id=f"waited-{waited}",
            received_at=utcnow() - timedelta(seconds=waited),
        )
        with runtime.results.expect(message.id) as result:
            await runtime.bus.publish(message)
            return await asyncio.wait_for(result, 20)

    fresh = await turn(PRICING, 0.0)  # the control: a message in time is searched for
    assert searched == [PRICING] and fresh.decision.reason is None

    late = await turn("Can I pause my subscription?", brain.deadline + 1)
    assert searched == [PRICING]
    assert late.decision.reason is Reason.MODEL_UNAVAILABLE
    assert late.replies and late.replies[0].startswith(brain.messages.holding)


# Admission control


@dataclass
class IdleGateway:
    runtime: Runtime
    http: TestClient[web.Request, web.Application]
    redis: Redis | None

    @property
    def admission(self) -> Admission:
        return self.runtime.admission

    def webhook(self, update_id: int) -> Any:
        """A Telegram webhook delivery (a request context manager, awaitable)."""
        update = private_message(update_id, PRICING, chat_id=update_id)
        return self.http.post(WEBHOOK_PATH, json=update, headers={SECRET_HEADER: SECRET})


def telegram_config(data_dir: Path, api_url: str, **fields: Any) -> GatewayConfig:
    telegram = {"enabled": True, "bot_token": TOKEN, "webhook_secret": SECRET, "api_url": api_url}
    return GatewayConfig(
        data_dir=data_dir,
        channels=ChannelsConfig(telegram=TelegramConfig.model_validate(telegram)),
        **fields,
    )


@pytest.fixture(params=["memory", "redis"])
async def idle_gateway(
    request: pytest.FixtureRequest, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[IdleGateway]:
    """The web role with Telegram webhooks and no worker running, with room for one REST or
    web chat message in flight."""
    redis_url = await backend(request, monkeypatch)
    pipeline = PipelineConfig(max_in_flight=1, retry_after=1.5)
    redis = connect_redis(redis_url) if redis_url else None
    async with FakeTelegram() as telegram:
        config = telegram_config(
            sample_data_dir, telegram.url, redis_url=redis_url, pipeline=pipeline
        )
        async with (
            Runtime.open(config) as runtime,
            TestClient(TestServer(build_app(runtime))) as http,
        ):
            yield IdleGateway(runtime, http, redis)
    if redis is not None:
        await redis.aclose()


async def test_rest_beyond_max_in_flight_gets_429_with_retry_after(
    idle_gateway: IdleGateway,
) -> None:
    http, runtime, admission = idle_gateway.http, idle_gateway.runtime, idle_gateway.admission
    first = asyncio.create_task(
        http.post("/api/messages", json={"conversation_id": "first", "text": PRICING})
    )
    await until(lambda: admission.in_flight == 1)  # published, waiting for a worker
    rejected = counter("gateway_rejected_total", channel="rest")

    second = await http.post("/api/messages", json={"conversation_id": "second", "text": PRICING})
    assert second.status == 429
    assert second.headers["Retry-After"] == "2"  # whole seconds, rounded up from 1.5
    assert "capacity" in (await second.json())["error"]
    assert counter("gateway_rejected_total", channel="rest") == rejected + 1

    async with working(runtime):  # the first is answered, which frees its place
        assert (await first).status == 200
        await until(lambda: admission.in_flight == 0)
        third = await http.post("/api/messages", json={"conversation_id": "third", "text": PRICING})
        assert third.status == 200


async def test_web_chat_beyond_max_in_flight_gets_an_error_frame_naming_the_message(
    idle_gateway: IdleGateway,
) -> None:
    async with idle_gateway.http.ws_connect("/webchat/ws") as socket:
        assert (await socket.receive_json(timeout=5))["type"] == "hello"
        await socket.send_json({"type": "message", "text": PRICING, "client_id": "c1"})
        assert await socket.receive_json(timeout=5) == {"type": "ack", "client_id": "c1"}
        await socket.send_json({"type": "message", "text": "And in Germany?", "client_id": "c2"})
        error = await socket.receive_json(timeout=5)
    assert error["type"] == "error" and error["client_id"] == "c2"
    assert error["retry_after"] == 2 and "again in 2 s" in error["message"]


async def test_a_webhook_is_taken_onto_the_bus_while_rest_is_refused(
    idle_gateway: IdleGateway,
) -> None:
    http = idle_gateway.http
    waiting = asyncio.create_task(
        http.post("/api/messages", json={"conversation_id": "a", "text": PRICING})
    )
    await until(lambda: idle_gateway.admission.in_flight == 1)
    refused = await http.post("/api/messages", json={"conversation_id": "b", "text": PRICING})
    assert refused.status == 429

    assert (await idle_gateway.webhook(1)).status == 200
    queued = await queued_ids(idle_gateway.runtime.bus, idle_gateway.redis)
    assert len(queued) == 2  # the REST message and the webhook's, none refused
    waiting.cancel()


async def test_webhooks_get_503_with_retry_after_once_the_bus_stops_taking_messages(
    sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-process queue with room for one message and no worker: the second webhook waits
    for room on the bus, and the third, beyond `max_webhooks_in_flight`, is told to retry."""
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    async with FakeTelegram() as telegram:
        pipeline = PipelineConfig(max_webhooks_in_flight=1)
        config = telegram_config(sample_data_dir, telegram.url, pipeline=pipeline)
        bus = MemoryBus(max_concurrency=1, max_queued=1)
        runtime = Runtime(
            config=config,
            bus=bus,
            store=MemoryStore(dedupe_ttl=86_400, conversation_ttl=3600),
            knowledge=open_knowledge(config),
            results=TurnResults(bus),
        )
        try:
            async with TestClient(TestServer(build_app(runtime))) as http:
                gateway = IdleGateway(runtime, http, None)
                assert (await gateway.webhook(1)).status == 200  # on the bus
                stuck = asyncio.create_task(gateway.webhook(2))  # waits for room on the bus
                await until(lambda: gateway.admission._webhooks == 1)
                refused = await gateway.webhook(3)
                assert refused.status == 503 and refused.headers["Retry-After"] == "2"
                assert not stuck.done()
                stuck.cancel()
        finally:
            for channel in runtime.channels.values():
                await channel.close()
            runtime.knowledge.close()
