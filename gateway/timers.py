"""The worker's timer sweep: each conversation's one durable timer (`Store.schedule`), once due,
becomes a TICK on the bus, so it is handled in the conversation's order and deduped across
workers. Whoever set the timer handles its tick in the pipeline: the hand-off relay (reminders,
pings, timeouts while waiting) or the satisfaction ask (after a bot answer met with silence).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import structlog

from gateway.bus import Bus
from gateway.message import Inbound, InboundKind, utcnow
from gateway.store import JOB_PREFIX, Store

log = structlog.get_logger(__name__)

SWEEP_BATCH = 100


async def sweep(
    store: Store, bus: Bus, interval: float, clock: Callable[[], datetime] = utcnow
) -> None:
    """Until cancelled: publish a TICK for each due timer, every `interval` seconds."""
    # A due timer stays due until its tick is processed, so each sweep would find it
    # again: remember what was published, and publish a timer only once per worker.
    published: dict[str, datetime] = {}
    while True:
        try:
            due = await store.due(clock(), SWEEP_BATCH)
            for key, at in due:
                # A job's timer (the weekly digest) is claimed by its own loop, not ticked.
                if published.get(key) != at and not key.startswith(JOB_PREFIX):
                    await _publish_tick(store, bus, key, at)
            published = dict(due)
        except Exception:
            log.exception("timers.sweep_failed")  # the store is down: try again next time
        await asyncio.sleep(interval)


async def _publish_tick(store: Store, bus: Bus, key: str, at: datetime) -> None:
    conversation = await store.load(key)
    if conversation is None:  # expired while waiting
        await store.unschedule(key)
        return
    await bus.publish(
        Inbound(
            kind=InboundKind.TICK,
            channel=conversation.channel,
            conversation=key,
            sender="handoff-timer",
            provider_message_id=f"tick:{key}:{at.timestamp():.3f}",
        )
    )
