"""Delivery: one reply to a customer, split to their channel's limits, sent, and recorded.

The pipeline (the bot's answers) and the relay (agents' replies, hand-off notices) both send
through `deliver`, so a reply is split, sent and written to the transcript the same way, and a
failure is always noted in the transcript instead of raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from gateway import metrics
from gateway.channel import Channel
from gateway.message import Outbound, Role, TranscriptEntry
from gateway.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Delivered:
    parts: tuple[str, ...]  # the messages sent; empty when it failed
    failure: str | None = None  # what went wrong, as noted in the transcript


async def deliver(
    channel: Channel | None, store: Store, reply: Outbound, *, message_id: str | None = None
) -> Delivered:
    """Send `reply` (whole text) in the parts the channel takes; then the transcript gets the
    reply, or a system note of the failure. `message_id` marks the entry with the event that
    caused it (an agent's reply), so a redelivered event is not sent twice."""
    try:
        if channel is None:
            raise LookupError(f"channel {reply.channel!r} is not enabled")
        parts = tuple(channel.split(reply.text))
        for part in parts:
            await channel.send(reply.model_copy(update={"text": part}))
    except Exception as exc:
        log.exception("delivery.failed", channel=reply.channel)
        metrics.ERRORS.labels("send").inc()
        failure = f"Delivery to the customer failed: {type(exc).__name__}"
        note = TranscriptEntry(role=Role.SYSTEM, text=failure, in_reply_to=reply.in_reply_to)
        await store.append(reply.conversation, note)
        return Delivered(parts=(), failure=failure)
    entry = TranscriptEntry(
        role=reply.role,
        text=reply.text,
        message_id=message_id,
        in_reply_to=reply.in_reply_to,
        author=reply.author,
        sources=reply.sources,
    )
    await store.append(reply.conversation, entry)
    return Delivered(parts=parts)
