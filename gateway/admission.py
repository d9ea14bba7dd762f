"""Admission control: how much work one web process takes on before it answers "later".

A customer message taken by REST or the web chat is in flight from its admission until its turn
result is broadcast (by whichever worker handled it) or `pipeline.reply_timeout` has passed.
Beyond `pipeline.max_in_flight` such messages, a new one is turned away at once, honestly: REST
429 with Retry-After, the web chat an error frame naming the message. Queued instead, it would
wait behind work the workers cannot finish within the deadline and get the holding reply, late.

Provider webhooks are not counted there: their message goes on the durable bus and the provider
is answered as soon as it is there, whatever the workers' backlog. Webhook requests only pile up
when the bus stops taking messages (a full in-process queue, a slow Redis); beyond
`pipeline.max_webhooks_in_flight` at once they get 503 with Retry-After, which providers retry.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway import metrics
from gateway.bus import Bus
from gateway.config import PipelineConfig
from gateway.message import Inbound
from gateway.topics import RESULTS


class Busy(Exception):
    """No room for one more webhook request in this process."""


class Admission:
    def __init__(self, config: PipelineConfig, bus: Bus) -> None:
        self._config = config
        self._bus = bus
        # message id -> event-loop time it stops counting; insertion order is expiry order.
        self._open: dict[str, float] = {}
        self._webhooks = 0
        bus.subscribe(RESULTS.name, self._on_result)

    @property
    def retry_after(self) -> int:
        """Whole seconds, as the Retry-After header has them."""
        return math.ceil(self._config.retry_after)

    @property
    def in_flight(self) -> int:
        self._expire()
        return len(self._open)

    async def publish(self, message: Inbound) -> bool:
        """Admit the message and put it on the bus; False when this process is full (nothing
        published, the rejection counted)."""
        if self.in_flight >= self._config.max_in_flight:
            metrics.REJECTED.labels(message.channel).inc()
            return False
        self._open[message.id] = asyncio.get_running_loop().time() + self._config.reply_timeout
        try:
            await self._bus.publish(message)
        except BaseException:
            self._open.pop(message.id, None)
            raise
        return True

    @contextmanager
    def webhook(self, channel: str) -> Iterator[None]:
        """Hold one of the webhook requests allowed in flight at once; `Busy` when none is
        free (the HTTP app answers 503 with Retry-After, which providers retry)."""
        if self._webhooks >= self._config.max_webhooks_in_flight:
            metrics.REJECTED.labels(channel).inc()
            raise Busy("the message bus is not taking messages")
        self._webhooks += 1
        try:
            yield
        finally:
            self._webhooks -= 1

    def _expire(self) -> None:
        now = asyncio.get_running_loop().time()
        while self._open:
            oldest = next(iter(self._open))
            if self._open[oldest] > now:
                return
            del self._open[oldest]

    def _on_result(self, payload: dict[str, Any]) -> None:
        self._open.pop(payload.get("message_id", ""), None)
