"""The archive's batched writer: queue to database, acknowledged only once committed.

It runs on the worker role, beside the pipeline and never in its way: the pipeline only puts
events on the queue. A failed batch stays on the queue and is written again after a backoff
(doubling up to `MAX_BACKOFF`), so a database outage delays the archive and loses nothing the
queue keeps (see `gateway/archive/queue.py` for what each queue keeps on a crash).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from gateway import metrics
from gateway.archive.database import ArchiveDatabase
from gateway.archive.queue import ArchiveQueue

log = structlog.get_logger(__name__)

MAX_BACKOFF = 30.0
PURGE_EVERY = timedelta(hours=1)


class ArchiveWriter:
    def __init__(
        self,
        queue: ArchiveQueue,
        database: ArchiveDatabase,
        *,
        batch_size: int,
        flush_interval: float,
        retention: timedelta,
    ) -> None:
        self._queue = queue
        self._database = database
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retention = retention
        self._purged_at: datetime | None = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until cancelled; or, once `stop` is set, until the queue holds nothing to write.

        (Stopping by `stop` lets a batch being written finish: a task cancelled in the middle
        of an aiosqlite statement was seen never to finish its cancellation.)"""
        backoff = self._flush_interval
        while True:
            try:
                written = await self.flush()
            except Exception as exc:
                log.warning("archive.write_failed", error=f"{type(exc).__name__}: {exc}")
                metrics.ARCHIVE_FAILURES.inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = self._flush_interval
            if stop is not None and stop.is_set() and not written:
                return
            await self._purge_when_due()
            if written < self._batch_size:  # a full batch means more is waiting: go on at once
                await asyncio.sleep(self._flush_interval)

    async def flush(self) -> int:
        """Write one batch; returns how many events it held."""
        taken = await self._queue.take(self._batch_size, self._flush_interval)
        if not taken:
            return 0
        await self._database.write(item.event for item in taken)
        await self._queue.ack(taken)
        metrics.ARCHIVE_WRITTEN.inc(len(taken))
        return len(taken)

    async def _purge_when_due(self) -> None:
        now = datetime.now(UTC)
        if self._purged_at is not None and now - self._purged_at < PURGE_EVERY:
            return
        self._purged_at = now
        try:
            deleted = await self._database.purge(now - self._retention)
        except Exception:
            log.exception("archive.purge_failed")
            return
        if deleted:
            log.info("archive.purged", rows=deleted, retention_days=self._retention.days)
