"""The embedded bus: an asyncio queue in one process (`gateway serve` with no REDIS_URL)."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from typing import Any

import structlog

from gateway.bus import Handler, Listener
from gateway.message import Inbound
from gateway.ordering import ConversationDispatcher

log = structlog.get_logger(__name__)


class MemoryBus:
    def __init__(self, *, max_concurrency: int, max_queued: int = 10_000) -> None:
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(max_queued)
        self._max_concurrency = max_concurrency
        self._listeners: defaultdict[str, list[Listener]] = defaultdict(list)
        self._arrival = itertools.count()

    async def publish(self, message: Inbound) -> None:
        await self._queue.put(message)

    async def consume(self, handler: Handler) -> None:
        dispatcher: ConversationDispatcher[Inbound] = ConversationDispatcher(
            handler, max_concurrency=self._max_concurrency
        )
        try:
            while True:
                await dispatcher.room()
                message = await self._queue.get()
                dispatcher.submit(message.conversation, next(self._arrival), message)
        finally:
            await dispatcher.close()

    async def broadcast(self, topic: str, payload: dict[str, Any]) -> None:
        for listener in self._listeners[topic]:
            try:
                listener(payload)
            except Exception:
                log.exception("bus.listener_failed", topic=topic)

    def subscribe(self, topic: str, listener: Listener) -> None:
        self._listeners[topic].append(listener)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
