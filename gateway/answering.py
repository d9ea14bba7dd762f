"""What the pipeline needs of the brain: an answerer and a policy check, as protocols.

The pipeline starts `retrieve` as soon as the transcript is read, so retrieval runs while the
conversation's state loads, then hands the passages to `decide`. `brain/` implements both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.message import Conversation, Decision, Inbound, TranscriptEntry


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk; ``score`` is the cosine similarity to the query, clamped to 0..1;
    ``found_by`` names the retrievers that ranked it ("dense", "bm25")."""

    text: str
    source: str
    title: str
    heading: str
    score: float
    found_by: tuple[str, ...] = ()


class Draft(Protocol):
    """Where a reply is written while it is still being worked out (a model's streamed words,
    a slow tool call's first result): the pipeline shows it to the customer as it grows,
    sentence by sentence, each once the policy check passed it (`gateway/streaming.py`). The
    decision's `reply` stays the whole reply, whatever was drafted."""

    def grow(self, text: str) -> None:
        """The reply so far: the whole text each time, normally longer than the last."""
        ...

    def hold(self, text: str) -> None:
        """Say `text` now, as the turn's holding line, when a step that has just begun (a tool
        call) will not end before the first-response deadline; nothing if the customer has
        seen something of this turn already."""
        ...


class Answerer(Protocol):
    async def retrieve(
        self, message: Inbound, history: Sequence[TranscriptEntry] = ()
    ) -> list[Passage] | None:
        """The knowledge-base passages for the message (read with the conversation's last
        turns, ``history``, when it is a follow-up); None when the deadline ran out."""
        ...

    async def decide(
        self,
        message: Inbound,
        conversation: Conversation,
        history: list[TranscriptEntry],
        passages: list[Passage] | None,
        draft: Draft | None = None,
    ) -> Decision:
        """Answer the customer's message, or decide to escalate, with a reason and sources;
        an answerer that can writes its reply into `draft` as it goes."""
        ...

    async def warm_up(self) -> None:
        """Load what the first message would otherwise wait for (models, exemplar vectors)."""
        ...

    async def close(self) -> None:
        """Release clients (HTTP connections to a model provider)."""
        ...


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    why: str


class PolicyCheck(Protocol):
    def check(self, text: str, quotes: Sequence[str] = ()) -> Violation | None:
        """The first operator rule the outgoing text breaks, or None when it may be sent;
        `quotes`: the knowledge-base passages the reply was drawn from (a rule may let a
        claim through that one of them makes word for word)."""
        ...
