"""The bus between the web edge and the pipeline workers: in-process, or Redis Streams.

`publish` returns only once the message is durable (on the stream), so a webhook is never
acknowledged for a message that could still be lost. `consume` hands messages to a handler one
at a time per conversation, in arrival order, many conversations at once. `broadcast` is a
fire-and-forget fan-out to every process (turn results for REST, replies for web chat sockets).

A broadcast can be lost (Redis pub/sub drops what is published while a subscriber reconnects),
so what a waiter must not miss is also kept for a while (`broadcast(..., keep=...)`, read back
with `recall`), and `on_resync` callbacks run whenever broadcasts may have been missed, for
listeners to re-read what they wait for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, NamedTuple, Protocol

from gateway.message import Inbound

Handler = Callable[[Inbound], Awaitable[object]]  # what it returns is not used
Listener = Callable[[dict[str, Any]], None]
Resync = Callable[[], Awaitable[None]]


class Keep(NamedTuple):
    """Keep a broadcast's payload under `key` for `seconds`, for `recall`."""

    key: str
    seconds: float


class Bus(Protocol):
    async def publish(self, message: Inbound) -> None: ...

    async def consume(self, handler: Handler) -> None:
        """Run until cancelled."""
        ...

    async def broadcast(
        self, topic: str, payload: dict[str, Any], *, keep: Keep | None = None
    ) -> None: ...

    async def recall(self, key: str) -> dict[str, Any] | None:
        """The payload last broadcast with `keep=Keep(key, ...)`, while it is kept."""
        ...

    async def lost(self, message_ids: Collection[str]) -> set[str]:
        """Those of `message_ids` (published by this process) that the bus lost before any
        worker took them, so that nobody will ever handle them (a Redis restarted empty)."""
        ...

    def subscribe(self, topic: str, listener: Listener) -> None: ...

    def on_resync(self, callback: Resync) -> None:
        """Run `callback` whenever broadcasts may have been missed (pub/sub re-subscribed)."""
        ...

    async def ping(self) -> None:
        """Raise unless messages can be published and consumed (readiness)."""
        ...

    async def close(self) -> None: ...
