"""The narrow interface every channel implements, and the registry from config key to adapter.

An adapter translates at the edge: provider payload in, one `Inbound` out (published on the
bus); one `Outbound` in, provider API call out. It declares what its channel can do, and the
pipeline adapts to that; adapters never branch on each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web

from adapters.split import split_text
from gateway.message import Outbound, Role, TranscriptEntry

if TYPE_CHECKING:
    from gateway.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Capabilities:
    text_limit: int | None  # characters per message; None: no limit, never split
    threads: bool = False
    typing: bool = False
    edits: bool = False
    media: bool = False


class Adapter(ABC):
    """One channel. Subclasses set `name` and `capabilities` and register themselves."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def routes(self) -> list[web.RouteDef]:
        """HTTP routes (webhooks, pages) mounted on the `web` process."""
        return []

    async def start(self) -> None:
        """Open long-lived provider connections (connectors role); HTTP-only channels need none."""

    async def stop(self) -> None:
        """Close what `start` opened."""

    async def close(self) -> None:
        """Release the clients `send` uses (HTTP sessions); called once when the runtime closes."""

    def split(self, text: str) -> list[str]:
        """Cut a reply into the messages `send` delivers; channels with richer rules override it."""
        return split_text(text, self.capabilities.text_limit)

    @abstractmethod
    async def send(self, outbound: Outbound) -> None:
        """Deliver one message (one part of `split`) to the customer."""

    async def typing(self, conversation: str) -> None:
        """Show that an answer is being prepared, where the channel can."""

    async def report_undelivered(
        self, conversation: str, status: str, detail: str, provider_message_id: str | None
    ) -> None:
        """A reply found undelivered after the fact (a status callback, a bounce, a held
        WhatsApp reply): noted in the transcript here, and announced on the bus, where the
        hand-off relay picks it up for the agents' thread."""
        await self.runtime.store.append(
            conversation, TranscriptEntry(role=Role.SYSTEM, text=detail)
        )
        await self.runtime.bus.broadcast(
            DELIVERY_TOPIC,
            {
                "conversation": conversation,
                "channel": self.name,
                "status": status,
                "detail": detail,
                "provider_message_id": provider_message_id,
            },
        )


# The bus topic of `Adapter.report_undelivered`.
DELIVERY_TOPIC = "delivery"

REGISTRY: dict[str, type[Adapter]] = {}


def register(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    def decorate(cls: type[Adapter]) -> type[Adapter]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate
