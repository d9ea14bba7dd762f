"""The bus between the web edge and the pipeline workers: in-process, or Redis Streams.

`publish` returns only once the message is durable (on the stream), so a webhook is never
acknowledged for a message that could still be lost. `consume` hands messages to a handler one
at a time per conversation, in arrival order, many conversations at once. `broadcast` is a
fire-and-forget fan-out to every process (turn results for REST, replies for web chat sockets).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.message import Inbound

Handler = Callable[[Inbound], Awaitable[object]]  # what it returns is not used
Listener = Callable[[dict[str, Any]], None]


class Bus(Protocol):
    async def publish(self, message: Inbound) -> None: ...

    async def consume(self, handler: Handler) -> None:
        """Run until cancelled."""
        ...

    async def broadcast(self, topic: str, payload: dict[str, Any]) -> None: ...

    def subscribe(self, topic: str, listener: Listener) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
