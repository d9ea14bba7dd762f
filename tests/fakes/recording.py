"""Recording test doubles for the two edges the pipeline and the relay talk to: a customer
channel and the agents' console (as Rasa's `CollectingOutputChannel`). They keep what they
were given, and fail on demand, so unit tests can read what a customer or an agent would see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from gateway.app.scenarios import recording
from gateway.channel import Capabilities, ReplyStream
from gateway.console import AgentThread, EscalationCard
from gateway.message import Outbound, TranscriptEntry


class RecordingChannel(recording.RecordingChannel):
    """`gateway test`'s recording channel as the REST channel, with short messages (so splits
    show), typing, and failures on demand."""

    name: ClassVar[str] = "rest"
    capabilities: ClassVar[Capabilities] = Capabilities(text_limit=40, typing=True)

    def __init__(self) -> None:
        super().__init__()
        self.failing: Exception | None = None  # raised by the next sends, when set

    async def send(self, outbound: Outbound) -> None:
        if self.failing is not None:
            raise self.failing
        await super().send(outbound)


class RecordingStreamingChannel(RecordingChannel):
    """A `RecordingChannel` that shows growing messages: each stream's steps, in order, as
    `("open" | "append" | "finish" | "replace", text)`."""

    capabilities: ClassVar[Capabilities] = Capabilities(text_limit=200, streaming=True)

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[list[tuple[str, str]]] = []

    async def stream(self, outbound: Outbound) -> ReplyStream | None:
        if self.failing is not None:
            raise self.failing
        steps = [("open", outbound.text)]
        self.streams.append(steps)
        return _RecordedStream(steps, len(self.streams) - 1)

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream | None:
        number = int(handle["stream"])
        return _RecordedStream(self.streams[number], number)


@dataclass
class _RecordedStream:
    steps: list[tuple[str, str]]
    number: int  # its place in `streams`

    @property
    def handle(self) -> dict[str, str]:
        return {"stream": str(self.number)}

    async def append(self, text: str) -> None:
        self.steps.append(("append", text))

    async def finish(self, reply: Outbound) -> None:
        self.steps.append(("finish", reply.text))

    async def replace(self, reply: Outbound) -> None:
        self.steps.append(("replace", reply.text))


@dataclass
class RecordingConsole:
    """`gateway.console.AgentConsole` that keeps each thread's card and lines."""

    cards: dict[str, EscalationCard] = field(default_factory=dict)  # thread key -> latest card
    lines: dict[str, list[str]] = field(default_factory=dict)  # thread key -> posted lines
    transcripts: dict[str, list[TranscriptEntry]] = field(default_factory=dict)

    async def open_thread(self, card: EscalationCard, *, channel: str) -> AgentThread:
        thread = AgentThread(channel=channel, ts=f"{len(self.cards) + 1}.000")
        self.cards[thread.key] = card
        self.lines[thread.key] = []
        return thread

    async def update_card(self, thread: AgentThread, card: EscalationCard) -> None:
        self.cards[thread.key] = card

    async def post_transcript(
        self, thread: AgentThread, entries: Sequence[TranscriptEntry]
    ) -> None:
        self.transcripts[thread.key] = list(entries)

    async def post(self, thread: AgentThread, text: str, *, mention: str | None = None) -> None:
        self.lines[thread.key].append(f"<{mention}> {text}" if mention else text)
