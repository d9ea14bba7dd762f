"""Request/response channels (REST) wait here for the result of the message they published.

Workers broadcast every `TurnResult`; each web process keeps a future per message it is waiting
for and resolves it when the result arrives, whichever process produced it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.bus import Bus
from gateway.message import TurnResult
from gateway.topics import RESULTS


class TurnResults:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._waiting: dict[str, asyncio.Future[TurnResult]] = {}
        # Decoded only when awaited here: every web process hears every result.
        bus.subscribe(RESULTS.name, self._on_result)

    async def publish(self, result: TurnResult) -> None:
        await self._bus.broadcast(RESULTS.name, result.model_dump(mode="json"))

    @contextmanager
    def expect(self, message_id: str) -> Iterator[asyncio.Future[TurnResult]]:
        """Register before publishing the message, so a fast result cannot be missed."""
        future: asyncio.Future[TurnResult] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        try:
            yield future
        finally:
            self._waiting.pop(message_id, None)

    def _on_result(self, payload: dict[str, Any]) -> None:
        future = self._waiting.get(payload.get("message_id", ""))
        if future is not None and not future.done():
            future.set_result(TurnResult.model_validate(payload))
