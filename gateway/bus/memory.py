"""The embedded bus: an asyncio queue in one process (`gateway serve` with no REDIS_URL)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, defaultdict
from collections.abc import Collection
from typing import Any

import structlog

from gateway.bus import Handler, Keep, Listener, Resync
from gateway.message import Inbound
from gateway.ordering import ConversationDispatcher

log = structlog.get_logger(__name__)


class MemoryBus:
    def __init__(self, *, max_concurrency: int, max_queued: int = 10_000) -> None:
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(max_queued)
        self._max_concurrency = max_concurrency
        self._listeners: defaultdict[str, list[Listener]] = defaultdict(list)
        self._arrival = itertools.count()
        # Kept payloads in the order they expire (every keep moves its key to the end).
        self._kept: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

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

    async def broadcast(
        self, topic: str, payload: dict[str, Any], *, keep: Keep | None = None
    ) -> None:
        if keep is not None:
            self._purge_kept()
            self._kept[keep.key] = (time.monotonic() + keep.seconds, payload)
            self._kept.move_to_end(keep.key)
        for listener in self._listeners[topic]:
            try:
                listener(payload)
            except Exception:
                log.exception("bus.listener_failed", topic=topic)

    async def recall(self, key: str) -> dict[str, Any] | None:
        self._purge_kept()
        kept = self._kept.get(key)
        return kept[1] if kept is not None else None

    async def lost(self, message_ids: Collection[str]) -> set[str]:
        """The in-process queue loses nothing while its process lives."""
        return set()

    def _purge_kept(self) -> None:
        now = time.monotonic()
        while self._kept and next(iter(self._kept.values()))[0] < now:
            self._kept.popitem(last=False)

    def subscribe(self, topic: str, listener: Listener) -> None:
        self._listeners[topic].append(listener)

    def on_resync(self, callback: Resync) -> None:
        """In one process no broadcast is ever missed: there is nothing to resync."""

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
