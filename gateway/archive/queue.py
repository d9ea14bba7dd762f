"""Where archive events wait for the database: in this process's memory, or a Redis stream.

`put` is what the pipeline calls: an append (memory) or one XADD (Redis), never a database
round trip. The writer `take`s a batch, writes it, then `ack`s it; a batch not acknowledged
(the database was down, the writer died) is taken again.

What a crash loses: in memory mode, what the process had not written yet (at most one flush
interval of events while the database is up; everything buffered while it is down). In Redis
mode, nothing: an entry leaves the stream only when its batch committed, and entries a dead
writer held are claimed by a live one after `claim_idle`. (Without Redis, `gateway serve` keeps
this memory queue in a child process that writes it: gateway/archive/child.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from typing import NamedTuple, Protocol

import structlog

from gateway import metrics
from gateway.archive import ArchiveEvent

log = structlog.get_logger(__name__)


class Taken(NamedTuple):
    token: str  # what `ack` needs to drop it from the queue
    event: ArchiveEvent


class ArchiveSink(Protocol):
    """What the pipeline's recorder puts events on."""

    async def put(self, event: ArchiveEvent) -> None: ...


class ArchiveQueue(ArchiveSink, Protocol):
    """A sink the writer takes its batches from, in this process."""

    async def take(self, limit: int, wait: float) -> list[Taken]:
        """Up to `limit` events not yet acknowledged, waiting up to `wait` s for the first."""
        ...

    async def ack(self, taken: list[Taken]) -> None: ...


class MemoryArchiveQueue:
    """One process's buffer, for its one writer; beyond `max_buffered` the oldest is dropped
    (and counted), so a database down for long cannot exhaust the memory."""

    def __init__(self, *, max_buffered: int) -> None:
        self._events: deque[Taken] = deque()
        self._max = max_buffered
        self._ids = itertools.count()
        self._wanted: asyncio.Event | None = None

    async def put(self, event: ArchiveEvent) -> None:
        if len(self._events) >= self._max:
            self._events.popleft()
            metrics.ARCHIVE_DROPPED.inc()
        self._events.append(Taken(str(next(self._ids)), event))
        if self._wanted is not None:
            self._wanted.set()

    async def take(self, limit: int, wait: float) -> list[Taken]:
        if not self._events:
            self._wanted = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), wait)
            self._wanted = None
        return list(itertools.islice(self._events, limit))

    async def ack(self, taken: list[Taken]) -> None:
        done = {item.token for item in taken}
        while self._events and self._events[0].token in done:
            self._events.popleft()

    def __len__(self) -> int:
        return len(self._events)
