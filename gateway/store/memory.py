"""The embedded store: one process, nothing to run; idle conversations and dedupe marks expire.

Conversations are also bounded in count and in (approximate) memory: past either bound, the
least recently written ones are evicted (every turn writes its conversation), so a flood of
new conversations cannot grow the process without limit.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from gateway.message import Conversation, TranscriptEntry

log = structlog.get_logger(__name__)

QUOTA_KEYS = 10_000  # quota counters kept before the expired ones are swept
# A transcript entry's size beyond its text (role, times, ids, as JSON): counted, not measured,
# so an append does not serialize the entry a second time on the two-second path.
ENTRY_OVERHEAD = 200


@dataclass(slots=True)
class _Record:
    conversation: str | None = None  # Conversation as JSON
    transcript: list[TranscriptEntry] = field(default_factory=list)
    touched: float = 0.0
    size: int = 0  # the conversation's JSON and its entries' estimated size: a proxy for memory


class MemoryStore:
    def __init__(
        self,
        *,
        dedupe_ttl: float,
        conversation_ttl: float,
        max_conversations: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """`max_conversations` and `max_bytes` bound what is kept (None: no bound)."""
        self._dedupe_ttl = dedupe_ttl
        self._conversation_ttl = conversation_ttl
        self._max_conversations = max_conversations
        self._max_bytes = max_bytes
        self._bytes = 0
        # These maps are kept in expiry order (every write moves its key to the end),
        # so purging expired entries only ever looks at the front.
        self._processed: OrderedDict[str, float] = OrderedDict()
        self._responses: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._threads: dict[str, str] = {}
        self._timers: dict[str, datetime] = {}  # waiting conversations and jobs: a short scan
        self._quotas: dict[str, tuple[float, int]] = {}  # key -> (window start, uses)

    async def is_processed(self, dedupe_key: str) -> bool:
        self._purge()
        return dedupe_key in self._processed

    async def mark_processed(self, dedupe_key: str) -> None:
        self._processed[dedupe_key] = time.monotonic() + self._dedupe_ttl
        self._processed.move_to_end(dedupe_key)

    async def save_response(self, dedupe_key: str, response: str) -> None:
        self._responses[dedupe_key] = (time.monotonic() + self._dedupe_ttl, response)
        self._responses.move_to_end(dedupe_key)

    async def saved_response(self, dedupe_key: str) -> str | None:
        self._purge()
        saved = self._responses.get(dedupe_key)
        return saved[1] if saved is not None else None

    async def load(self, key: str) -> Conversation | None:
        self._purge()
        record = self._records.get(key)
        # A copy, as from Redis: a turn's changes are seen by others only once it saves them.
        # Kept as JSON because parsing it back is several times cheaper than a deep copy.
        saved = record.conversation if record else None
        return Conversation.model_validate_json(saved) if saved else None

    async def save(self, conversation: Conversation) -> None:
        record = self._touch(conversation.key)
        saved = conversation.model_dump_json()
        self._grow(record, len(saved) - len(record.conversation or ""))
        record.conversation = saved

    async def append(self, key: str, entry: TranscriptEntry) -> None:
        record = self._touch(key)
        record.transcript.append(entry)
        self._grow(record, len(entry.text) + ENTRY_OVERHEAD)

    async def transcript(self, key: str, last: int | None = None) -> list[TranscriptEntry]:
        record = self._records.get(key)
        if record is None:
            return []
        return record.transcript[-last:] if last else list(record.transcript)

    async def link_thread(self, thread: str, conversation: str) -> None:
        self._threads[thread] = conversation

    async def thread_conversation(self, thread: str) -> str | None:
        conversation = self._threads.get(thread)
        if conversation is not None and conversation not in self._records:
            del self._threads[thread]  # its conversation expired
            return None
        return conversation

    async def schedule(self, key: str, at: datetime) -> None:
        self._timers[key] = at

    async def due(self, now: datetime, limit: int) -> list[tuple[str, datetime]]:
        ready = ((at, key) for key, at in self._timers.items() if at <= now)
        return [(key, at) for at, key in heapq.nsmallest(limit, ready)]

    async def scheduled(self, key: str) -> datetime | None:
        return self._timers.get(key)

    async def unschedule(self, key: str) -> None:
        self._timers.pop(key, None)

    async def within_quota(self, key: str, limit: int, window: float) -> bool:
        now = time.monotonic()
        start, count = self._quotas.get(key, (now, 0))
        if now - start >= window:
            start, count = now, 0
        if count >= limit:
            return False
        self._quotas[key] = (start, count + 1)
        if len(self._quotas) > QUOTA_KEYS:  # forget keys whose window has passed
            self._quotas = {k: v for k, v in self._quotas.items() if now - v[0] < window}
        return True

    async def forget(self, key: str) -> None:
        record = self._records.pop(key, None)
        if record is not None:
            self._bytes -= record.size
        self._timers.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._records)

    def _touch(self, key: str) -> _Record:
        record = self._records.get(key) or _Record()
        record.touched = time.monotonic()
        self._records[key] = record
        self._records.move_to_end(key)
        return record

    def _grow(self, record: _Record, size: int) -> None:
        """Count `size` more bytes for `record` (the newest), then evict the least recently
        written conversations while a bound is exceeded; the newest one is always kept."""
        record.size += size
        self._bytes += size
        evicted = 0
        while len(self._records) > 1 and (
            (self._max_conversations is not None and len(self._records) > self._max_conversations)
            or (self._max_bytes is not None and self._bytes > self._max_bytes)
        ):
            self._timers.pop(self._drop_oldest(), None)
            evicted += 1
        if evicted:
            log.warning(
                "store.evicted",
                conversations=evicted,
                kept=len(self._records),
                bytes=self._bytes,
                hint="raise pipeline.memory_max_conversations / memory_max_bytes, or use Redis",
            )

    def _drop_oldest(self) -> str:
        key, record = self._records.popitem(last=False)
        self._bytes -= record.size
        return key

    def _purge(self) -> None:
        now = time.monotonic()
        while self._processed and next(iter(self._processed.values())) < now:
            self._processed.popitem(last=False)
        while self._responses and next(iter(self._responses.values()))[0] < now:
            self._responses.popitem(last=False)
        horizon = now - self._conversation_ttl
        while self._records and next(iter(self._records.values())).touched < horizon:
            self._drop_oldest()
