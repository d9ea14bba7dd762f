"""Request/response channels (REST) wait here for the result of the message they published.

Workers broadcast every `TurnResult` and keep it for `KEEP_SECONDS`; each web process keeps a
future per message it is waiting for and resolves it when the result arrives, whichever process
produced it. A broadcast can be lost (a pub/sub reconnect), so a waiter also re-reads the kept
result when the bus resyncs and every `RECHECK_SECONDS` while it waits.

A duplicate (a retried provider message id, e.g. a REST `Idempotency-Key`) whose message id is
the original's resolves with the original's kept result, so a retry is answered like the first
attempt, and the bot still answers only once.

A message can also be lost before any worker took it (a Redis restarted without persistence):
the rechecks ask the bus, and a message it still reports lost `LOST_CONFIRM_SECONDS` later (by
then a worker that held it has said so) fails its waiters with `MessageLost`, at once rather
than at their time-out, so that the sender can send it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.bus import Bus, Keep
from gateway.message import TurnResult
from gateway.topics import RESULTS

log = structlog.get_logger(__name__)

KEEP_SECONDS = 300.0  # how long a result can be read back by a waiter that missed it
RECHECK_SECONDS = 2.0
LOST_CONFIRM_SECONDS = 3.0


class MessageLost(Exception):
    """The bus lost the message before any worker took it: nobody will answer it."""


def _kept_key(message_id: str) -> str:
    return f"result:{message_id}"


@dataclass(slots=True)
class _Waiting:
    future: asyncio.Future[TurnResult]
    waiters: int = 0
    since: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    lost_since: float | None = None  # when the bus first reported it lost


class TurnResults:
    def __init__(self, bus: Bus, *, keep_seconds: float = KEEP_SECONDS) -> None:
        self._bus = bus
        self._keep_seconds = keep_seconds
        self._waiting: dict[str, _Waiting] = {}
        self._rechecking: asyncio.Task[None] | None = None
        self._recalls: set[asyncio.Task[None]] = set()
        bus.subscribe(RESULTS.name, self._on_result)  # decoded only when awaited here
        bus.on_resync(self._recheck_all)

    async def publish(self, result: TurnResult) -> None:
        # A duplicate's result is not kept: it would replace the original's, which is what a
        # retry is answered with.
        keep = None if result.duplicate else Keep(_kept_key(result.message_id), self._keep_seconds)
        await self._bus.broadcast(RESULTS.name, result.model_dump(mode="json"), keep=keep)

    @contextmanager
    def expect(self, message_id: str) -> Iterator[asyncio.Future[TurnResult]]:
        """Register before publishing the message, so a fast result cannot be missed.

        Requests waiting for the same message id (a retry while the first is in flight) share
        one future."""
        waiting = self._waiting.get(message_id)
        if waiting is None:
            future = asyncio.get_running_loop().create_future()
            waiting = self._waiting[message_id] = _Waiting(future)
        waiting.waiters += 1
        if self._rechecking is None or self._rechecking.done():
            self._rechecking = asyncio.create_task(self._recheck_while_waiting())
        try:
            yield waiting.future
        finally:
            waiting.waiters -= 1
            if waiting.waiters == 0 and self._waiting.get(message_id) is waiting:
                del self._waiting[message_id]
            if not self._waiting and self._rechecking is not None:
                self._rechecking.cancel()
                self._rechecking = None

    def _on_result(self, payload: dict[str, Any]) -> None:
        message_id = payload.get("message_id", "")
        waiting = self._waiting.get(message_id)
        if waiting is None or waiting.future.done():
            return
        result = TurnResult.model_validate(payload)
        if not result.duplicate:
            waiting.future.set_result(result)
            return
        # The original's result, if it is still kept, answers the retry.
        task = asyncio.create_task(self._recheck(message_id, fallback=result))
        self._recalls.add(task)
        task.add_done_callback(self._recalls.discard)

    async def _recheck(self, message_id: str, fallback: TurnResult | None = None) -> None:
        try:
            payload = await self._bus.recall(_kept_key(message_id))
        except Exception as exc:  # the bus is down: the next recheck or resync tries again
            log.warning("results.recheck_failed", error=str(exc))
            return
        waiting = self._waiting.get(message_id)
        if waiting is None or waiting.future.done():
            return
        if payload is not None:
            waiting.future.set_result(TurnResult.model_validate(payload))
        elif fallback is not None:
            waiting.future.set_result(fallback)

    async def _recheck_all(self, older_than: float = 0.0) -> None:
        """Re-read the kept result of every message waited for longer than `older_than` s."""
        now = asyncio.get_running_loop().time()
        pending = [
            message_id
            for message_id, waiting in list(self._waiting.items())
            if not waiting.future.done() and now - waiting.since >= older_than
        ]
        await asyncio.gather(*(self._recheck(message_id) for message_id in pending))
        unanswered = [
            m for m in pending if m in self._waiting and not self._waiting[m].future.done()
        ]
        if unanswered:
            await self._check_lost(unanswered)

    async def _check_lost(self, message_ids: list[str]) -> None:
        try:
            lost = await self._bus.lost(message_ids)
        except Exception as exc:  # the bus is down: the next recheck or resync tries again
            log.warning("results.lost_check_failed", error=str(exc))
            return
        now = asyncio.get_running_loop().time()
        for message_id in message_ids:
            waiting = self._waiting.get(message_id)
            if waiting is None or waiting.future.done():
                continue
            if message_id not in lost:
                waiting.lost_since = None
            elif waiting.lost_since is None:
                waiting.lost_since = now
            elif now - waiting.lost_since >= LOST_CONFIRM_SECONDS:
                log.warning("results.message_lost", message=message_id)
                waiting.future.set_exception(MessageLost(message_id))

    async def _recheck_while_waiting(self) -> None:
        """The safety net for a lost broadcast the bus could not notice; stopped when no one
        waits any more."""
        while self._waiting:
            await asyncio.sleep(RECHECK_SECONDS)
            await self._recheck_all(older_than=RECHECK_SECONDS)
