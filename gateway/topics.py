"""Typed broadcasts: what each fan-out topic of the bus carries.

The bus moves JSON (`Bus.broadcast` / `Bus.subscribe`); a `Topic` gives each stream of it one
pydantic model, so senders and listeners cannot disagree on a payload's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from gateway.bus import Bus
from gateway.message import Model, TurnResult

log = structlog.get_logger(__name__)

PayloadT = TypeVar("PayloadT", bound=BaseModel)


class DeliveryReport(Model):
    """A reply found undelivered after the fact (a status callback, a bounce, a held reply)."""

    conversation: str
    channel: str
    status: str
    detail: str
    provider_message_id: str | None = None


class WebchatFrame(Model):
    """A frame for the browser sockets of one web chat conversation, on whichever process."""

    conversation: str
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Topic(Generic[PayloadT]):
    name: str
    model: type[PayloadT]


RESULTS = Topic("results", TurnResult)  # every processed message, for request/response waiters
DELIVERY = Topic("delivery", DeliveryReport)  # for the hand-off relay's agents' threads
WEBCHAT = Topic("webchat", WebchatFrame)  # for the web process holding the customer's socket


async def broadcast(bus: Bus, topic: Topic[PayloadT], payload: PayloadT) -> None:
    await bus.broadcast(topic.name, payload.model_dump(mode="json"))


def subscribe(bus: Bus, topic: Topic[PayloadT], listener: Callable[[PayloadT], None]) -> None:
    """Call `listener` with each payload of `topic`; one that does not fit is logged and dropped."""

    def decode(raw: dict[str, Any]) -> None:
        try:
            payload = topic.model.model_validate(raw)
        except ValidationError:
            log.warning("bus.bad_payload", topic=topic.name, exc_info=True)
            return
        listener(payload)

    bus.subscribe(topic.name, decode)
