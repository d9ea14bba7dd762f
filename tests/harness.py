"""One gateway under test: the runtime a test's config builds, its worker consuming the bus,
its HTTP app behind a real server, and a `Traffic` record of what passes on the bus.

Channel tests subclass `Gateway` with their fake provider and helpers (how to deliver a signed
webhook, what counts as answered) and open it the same way: `async with
TelegramGateway.open(config, telegram=fake) as tg`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from aiohttp.test_utils import TestClient, TestServer

from gateway.app.http import build_app
from gateway.app.processes import timers_and_reports
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.bus import Bus, Keep
from gateway.channel import Channel
from gateway.message import Inbound, TurnResult
from gateway.topics import RESULTS
from tests.fakes import until

ChannelT = TypeVar("ChannelT", bound=Channel)


@dataclass
class Gateway:
    runtime: Runtime
    http: TestClient
    traffic: Traffic

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: GatewayConfig,
        *,
        embedded: bool = False,
        warm: bool = True,
        consume: Callable[[Inbound], Awaitable[object]] | None = None,
        timers: bool = False,
        **extra: Any,
    ) -> AsyncIterator[Self]:
        """`embedded`: the in-process bus and store whatever the config says; `warm`: the
        embedder loaded and the intents' exemplars embedded first, as `gateway worker` does
        before it consumes (False: a first answer timed with a cold start); `consume`:
        what the worker does with each message (default: the pipeline); `timers`: the timer
        sweep (the hand-off relay's, when it has one) runs too; `extra`: the subclass's own
        fields."""
        async with Runtime.open(config, embedded=embedded) as runtime:
            if warm:
                await runtime.answerer.warm_up()
            traffic = Traffic(runtime.bus)
            async with (
                working(runtime, consume=consume, timers=timers),
                TestClient(TestServer(build_app(runtime))) as client,
            ):
                yield cls(runtime=runtime, http=client, traffic=traffic, **extra)

    def channel(self, kind: type[ChannelT]) -> ChannelT:
        """The running channel of this class (its `name` under `channels:`)."""
        channel = self.runtime.channels[kind.name]
        assert isinstance(channel, kind)
        return channel

    async def ask(self, conversation_id: str, text: str, **headers: str) -> dict[str, Any]:
        """One REST message, answered."""
        response = await self.http.post(
            "/api/messages",
            json={"conversation_id": conversation_id, "text": text},
            headers=headers,
        )
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


@asynccontextmanager
async def working(
    runtime: Runtime,
    *,
    consume: Callable[[Inbound], Awaitable[object]] | None = None,
    timers: bool = False,
) -> AsyncIterator[None]:
    """The worker role of `runtime` while the block runs: its bus consumed by `consume` (the
    pipeline by default) and, with `timers`, the worker's timer sweep."""
    tasks = [asyncio.create_task(runtime.bus.consume(consume or runtime.pipeline.handle))]
    if timers:
        tasks.append(asyncio.create_task(timers_and_reports(runtime)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Traffic:
    """What passes through one process's bus from now on: the messages published and the
    broadcasts sent on it, and the turn results the workers (of any process) broadcast.

    Every message a worker takes ends in exactly one result (a duplicate's too), broadcast
    after its replies were sent and its turn saved. So once every published message has its
    result, the pipeline has finished all it was given: a test can then assert that something
    was *not* sent, instead of sleeping and hoping nothing more comes. Webhooks publish (and
    status callbacks broadcast) before they answer, so what they did is counted by then.
    """

    def __init__(self, bus: Bus) -> None:
        self.published: list[Inbound] = []
        self.broadcasts: list[tuple[str, dict[str, Any]]] = []
        self.results: list[TurnResult] = []
        publish, broadcast = bus.publish, bus.broadcast

        # Counted before, so a fast result never outruns its message's count.
        async def counted_publish(message: Inbound) -> None:
            self.published.append(message)
            await publish(message)

        async def counted_broadcast(
            topic: str, payload: dict[str, Any], *, keep: Keep | None = None
        ) -> None:
            self.broadcasts.append((topic, payload))
            await broadcast(topic, payload, keep=keep)

        bus.publish = counted_publish  # type: ignore[method-assign]
        bus.broadcast = counted_broadcast  # type: ignore[method-assign]
        bus.subscribe(RESULTS.name, self._on_result)

    def _on_result(self, payload: dict[str, Any]) -> None:
        self.results.append(TurnResult.model_validate(payload))

    def told(self, topic: str) -> list[dict[str, Any]]:
        """The payloads broadcast on `topic`."""
        return [payload for sent_on, payload in self.broadcasts if sent_on == topic]

    async def settled(self, within: float = 20.0) -> list[TurnResult]:
        """Wait until every message published so far was processed; the results, in arrival
        order. (A message published in the background, such as a timer tick or a delivery
        report, counts once it reached `publish`: wait for that first.)"""
        try:
            await until(lambda: len(self.results) >= len(self.published), within)
        except AssertionError:
            raise AssertionError(
                f"{len(self.published)} messages published, {len(self.results)} turns "
                f"finished within {within:g} s: a turn failed or is stuck"
            ) from None
        return self.results
