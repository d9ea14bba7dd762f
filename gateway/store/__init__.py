"""Conversation state, append-only transcripts and dedupe marks: in memory, or in Redis."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from gateway.message import Conversation, TranscriptEntry

# Schedule keys that are no conversation's (`job:digest`, the weekly digest): the same durable
# timers, fired by their own owner; the hand-off relay's sweep leaves them alone.
JOB_PREFIX = "job:"


class Store(Protocol):
    async def is_processed(self, dedupe_key: str) -> bool:
        """True when a message with this provider id finished processing within the dedupe TTL."""
        ...

    async def mark_processed(self, dedupe_key: str) -> None: ...

    async def save_response(self, dedupe_key: str, response: str) -> None:
        """Keep what a request/response channel answered for this provider message id (REST's
        `Idempotency-Key`), for the dedupe TTL, so a retry gets the same answer."""
        ...

    async def saved_response(self, dedupe_key: str) -> str | None: ...

    async def load(self, key: str) -> Conversation | None: ...

    async def save(self, conversation: Conversation) -> None: ...

    async def append(self, key: str, entry: TranscriptEntry) -> None: ...

    async def transcript(self, key: str, last: int | None = None) -> list[TranscriptEntry]: ...

    async def link_thread(self, thread: str, conversation: str) -> None:
        """Remember which conversation an agents' thread (e.g. Slack `channel:ts`) belongs to."""
        ...

    async def thread_conversation(self, thread: str) -> str | None: ...

    async def schedule(self, key: str, at: datetime) -> None:
        """Be due at `at` (the hand-off's next timer); replaces the conversation's earlier one."""
        ...

    async def due(self, now: datetime, limit: int) -> list[tuple[str, datetime]]:
        """Up to `limit` conversations due at `now`, earliest first; they stay scheduled until
        `unschedule` or a new `schedule`, so a timer a crashed worker dropped fires again."""
        ...

    async def scheduled(self, key: str) -> datetime | None:
        """When `key` is due, or None when it is not scheduled."""
        ...

    async def unschedule(self, key: str) -> None: ...

    async def within_quota(self, key: str, limit: int, window: float) -> bool:
        """Count one use of `key`; False once it was used `limit` times in the current fixed
        `window` (seconds). Shared by every process on the same backend (the email reply cap)."""
        ...

    async def forget(self, key: str) -> None:
        """Delete a conversation's state, transcript and timer (`gateway erase`)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
