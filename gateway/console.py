"""The agents' console: where escalated conversations are shown to people and answered.

The relay (hand-off) speaks to it through this protocol; `adapters/slack.py` implements it on
a Slack channel. Agents' replies and button presses come back as `Inbound` events of an agent
`InboundKind`, published on the bus under the customer's conversation key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.message import Mode, Model, Reason, Source, TranscriptEntry


class AgentThread(Model):
    """One escalated conversation's thread in the console (for Slack: channel id and parent ts)."""

    channel: str
    ts: str

    @property
    def key(self) -> str:
        """The id the store links to the conversation (`Store.link_thread`)."""
        return f"{self.channel}:{self.ts}"


class EscalationCard(Model):
    """What an agent sees first: who, where, why, what the bot knew and said."""

    conversation: str
    customer: str
    customer_channel: str
    reason: Reason | None
    explanation: str
    summary: str
    last_answer: str = ""
    sources: tuple[Source, ...] = ()
    tool_calls: tuple[str, ...] = ()  # the business-API calls of the conversation, one line each
    mode: Mode = Mode.WAITING
    agent: str | None = None  # display name of the agent who claimed it


class AgentConsole(Protocol):
    async def open_thread(self, card: EscalationCard, *, channel: str) -> AgentThread:
        """Post the card (with Claim / Resolve / Hand back buttons) as a new thread parent."""
        ...

    async def update_card(self, thread: AgentThread, card: EscalationCard) -> None:
        """Redraw the parent after a state change (claimed by, resolved)."""
        ...

    async def post_transcript(
        self, thread: AgentThread, entries: Sequence[TranscriptEntry]
    ) -> None:
        """The full transcript into the thread; a long one as a file."""
        ...

    async def post(self, thread: AgentThread, text: str, *, mention: str | None = None) -> None:
        """A line in the thread: a customer's follow-up, a status, a delivery failure.

        `mention` (a user-group id) pings the people behind it.
        """
        ...
