"""Delivery: one reply to a customer, split to their channel's limits, sent, and recorded.

The pipeline (the bot's answers) and the relay (agents' replies, hand-off notices) both send
through `deliver`, so a reply is split, sent and written to the transcript the same way, and a
failure is always noted in the transcript instead of raised. A reply streamed to the customer
(`gateway/streaming.py`) is sent by its stream, then recorded and noted with the same `record`
and `note_failure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from gateway import metrics
from gateway.channel import Channel
from gateway.message import Outbound, Role, TranscriptEntry, utcnow
from gateway.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Delivered:
    parts: tuple[str, ...]  # the messages sent; empty when it failed
    failure: str | None = None  # what went wrong, as noted in the transcript


@dataclass(frozen=True, slots=True)
class Timing:
    """When the customer's message was received, and when they first saw text of its turn:
    the answer's entry records both delays (`TranscriptEntry.first_response_ms`)."""

    received_at: datetime
    first_shown_at: datetime | None = None


async def deliver(
    channel: Channel | None,
    store: Store,
    reply: Outbound,
    *,
    message_id: str | None = None,
    holding: bool = False,
    timing: Timing | None = None,
) -> Delivered:
    """Send `reply` (whole text) in the parts the channel takes; then the transcript gets the
    reply, or a system note of the failure. `message_id` marks the entry with the event that
    caused it (an agent's reply), so a redelivered event is not sent twice; `holding` marks a
    holding line (`TranscriptEntry.holding`)."""
    try:
        if channel is None:
            raise LookupError(f"channel {reply.channel!r} is not enabled")
        parts = tuple(channel.split(reply.text))
        for part in parts:
            await channel.send(reply.model_copy(update={"text": part}))
    except Exception as exc:
        return await note_failure(store, reply, exc, holding=holding)
    await record(store, reply, message_id=message_id, holding=holding, timing=timing)
    return Delivered(parts=parts)


async def record(
    store: Store,
    reply: Outbound,
    *,
    message_id: str | None = None,
    holding: bool = False,
    timing: Timing | None = None,
) -> None:
    """The transcript entry of a reply just sent."""
    now = utcnow()
    shown = timing.first_shown_at or now if timing else None
    entry = TranscriptEntry(
        role=reply.role,
        text=reply.text,
        message_id=message_id,
        in_reply_to=reply.in_reply_to,
        author=reply.author,
        sources=reply.sources,
        holding=holding,
        first_response_ms=_ms(timing.received_at, shown) if timing and shown else None,
        latency_ms=_ms(timing.received_at, now) if timing else None,
    )
    await store.append(reply.conversation, entry)


async def note_failure(
    store: Store, reply: Outbound, error: Exception, *, holding: bool = False
) -> Delivered:
    """Log a reply that could not be sent, and note it in the transcript (a holding line's
    failure as part of a turn whose answer is still to come)."""
    log.error("delivery.failed", channel=reply.channel, exc_info=error)
    metrics.ERRORS.labels("send").inc()
    failure = f"Delivery to the customer failed: {type(error).__name__}"
    note = TranscriptEntry(
        role=Role.SYSTEM, text=failure, in_reply_to=reply.in_reply_to, holding=holding
    )
    await store.append(reply.conversation, note)
    return Delivered(parts=(), failure=failure)


def _ms(start: datetime, end: datetime) -> float:
    return round(max((end - start).total_seconds() * 1000, 0.0), 2)
