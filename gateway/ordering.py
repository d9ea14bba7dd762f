"""One message of a conversation at a time, in arrival order; many conversations at once.

Each active conversation gets a mailbox and one runner task that drains it; the mailbox is
dropped the moment it is empty, so nothing accumulates as conversations come and go (no
per-conversation lock objects that outlive their use, no polling). A global slot count caps
how many conversations run at once. For back-pressure the bus waits for `room()` before it reads
more messages; `submit` itself never waits, because a message may be the one that every queued
message of its conversation is waiting for (a dead worker's message, claimed back).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Generic, Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A safety net only: a turn gate wakes its waiters when a turn completes; this bounds the wait
# if that notification is ever lost (for example a Redis pub/sub reconnect).
GATE_RECHECK_SECONDS = 1.0


class Turn(Enum):
    READY = auto()  # the previous message of the conversation is done: process this one
    DONE = auto()  # this message was already processed (a redelivery): skip it
    WAIT = auto()  # an earlier message is still in flight elsewhere


class TurnGate(Protocol):
    """Orders a conversation's messages across processes (the in-process bus needs none)."""

    async def turn(self, key: str, seq: int) -> Turn: ...


@dataclass(order=True, slots=True)
class Delivery(Generic[T]):
    seq: int
    item: T = field(compare=False)


@dataclass(slots=True)
class _Mailbox(Generic[T]):
    heap: list[Delivery[T]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ConversationDispatcher(Generic[T]):
    def __init__(
        self,
        handler: Callable[[T], Awaitable[object]],
        *,
        max_concurrency: int,
        max_pending: int | None = None,
        skip: Callable[[T], Awaitable[object]] | None = None,
        gate: TurnGate | None = None,
    ) -> None:
        self._handler = handler
        self._skip = skip
        self._gate = gate
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_pending = max_pending or max_concurrency * 16
        self._pending = 0
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._mailboxes: dict[str, _Mailbox[T]] = {}
        self._runners: set[asyncio.Task[None]] = set()

    @property
    def active_conversations(self) -> int:
        return len(self._mailboxes)

    async def room(self) -> None:
        """Wait until fewer than `max_pending` messages are queued or in flight."""
        await self._has_room.wait()

    def submit(self, key: str, seq: int, item: T) -> None:
        """Queue `item` behind the conversation's earlier messages (lower `seq`)."""
        self._pending += 1
        if self._pending >= self._max_pending:
            self._has_room.clear()
        mailbox = self._mailboxes.get(key)
        if mailbox is None:
            mailbox = self._mailboxes[key] = _Mailbox()
            runner = asyncio.create_task(self._run(key, mailbox), name=f"conversation:{key}")
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        heapq.heappush(mailbox.heap, Delivery(seq, item))
        mailbox.wake.set()

    def wake(self, key: str) -> None:
        """Tell a waiting conversation that its turn may have come (a gate notification)."""
        mailbox = self._mailboxes.get(key)
        if mailbox is not None:
            mailbox.wake.set()

    async def drain(self) -> None:
        """Wait until every submitted message has been handled."""
        while self._runners:
            await asyncio.gather(*list(self._runners), return_exceptions=True)

    async def close(self) -> None:
        for runner in list(self._runners):
            runner.cancel()
        await asyncio.gather(*list(self._runners), return_exceptions=True)

    async def _run(self, key: str, mailbox: _Mailbox[T]) -> None:
        try:
            while mailbox.heap:
                head = mailbox.heap[0]
                mailbox.wake.clear()  # before asking, so a wake-up during the question counts
                turn = await self._gate.turn(key, head.seq) if self._gate else Turn.READY
                if turn is Turn.WAIT:
                    # Waiting holds no slot: slots are for work, and a worker whose slots
                    # all waited on each other's processes could never make progress.
                    await _wait(mailbox.wake, GATE_RECHECK_SECONDS)
                    continue
                heapq.heappop(mailbox.heap)
                try:
                    async with self._slots:
                        await self._process(turn, head.item)
                finally:
                    self._pending -= 1
                    if self._pending < self._max_pending:
                        self._has_room.set()
        finally:
            # No await between the empty check above and this deletion, so a concurrent
            # submit either found this mailbox non-empty or creates a fresh one.
            if self._mailboxes.get(key) is mailbox:
                del self._mailboxes[key]

    async def _process(self, turn: Turn, item: T) -> None:
        try:
            if turn is Turn.DONE:
                if self._skip is not None:
                    await self._skip(item)
            else:
                await self._handler(item)
        except Exception:
            # The handler owns its errors; this keeps one bad message from stopping its
            # conversation's runner and every message queued behind it.
            log.exception("dispatch.handler_failed")


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
