"""Conversation state, append-only transcripts and dedupe marks: in memory, or in Redis."""

from __future__ import annotations

from typing import Protocol

from gateway.message import Conversation, TranscriptEntry


class Store(Protocol):
    async def is_processed(self, dedupe_key: str) -> bool:
        """True when a message with this provider id finished processing within the dedupe TTL."""
        ...

    async def mark_processed(self, dedupe_key: str) -> None: ...

    async def load(self, key: str) -> Conversation | None: ...

    async def save(self, conversation: Conversation) -> None: ...

    async def append(self, key: str, entry: TranscriptEntry) -> None: ...

    async def transcript(self, key: str, last: int | None = None) -> list[TranscriptEntry]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
