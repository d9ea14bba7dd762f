"""What every answerer (offline today, Claude in the brain issue) promises the pipeline."""

from __future__ import annotations

from typing import Protocol

from gateway.message import Conversation, Decision, Inbound, TranscriptEntry


class Answerer(Protocol):
    async def decide(
        self, message: Inbound, conversation: Conversation, history: list[TranscriptEntry]
    ) -> Decision:
        """Answer the customer's message, or decide to escalate, with a reason and sources."""
        ...
