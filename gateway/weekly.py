"""The weekly loop: the digest posted to the agents' Slack channel once a week, by one worker.

Its timer is a key of the store's durable schedule, where the hand-off's timers live
(`job:digest`; the relay's sweep leaves `job:` keys alone), so it outlives restarts and, on
Redis, is shared by every worker:

- A worker schedules the next digest unless one is scheduled already, so a digest that fell due
  while every worker was down is still posted, late (one more than a week late is skipped). One
  scheduled for another day or time (the config changed) moves to the new schedule.
- Every `check_interval` a worker whose digest is due claims it for `retry_after` seconds
  (`Store.within_quota` with a limit of one: a single winner across workers), posts it, and only
  then schedules the next one. A failed post, or a worker that died holding the claim, leaves it
  due: the claim lapses and a worker posts it after `retry_after`. Only a worker that dies
  between Slack's answer and the one store write that schedules the next digest can have it
  posted twice.

A digest covers the seven days up to the moment it fell due, whenever it is posted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog

from gateway import metrics
from gateway.archive.digest import WEEK, Digest
from gateway.archive.digest_blocks import digest_blocks, digest_text
from gateway.config import WEEKDAYS, DigestConfig
from gateway.message import utcnow
from gateway.store import JOB_PREFIX, Store

log = structlog.get_logger(__name__)

KEY = f"{JOB_PREFIX}digest"


class DigestPoster(Protocol):
    async def post(self, channel: str, text: str, blocks: list[dict[str, Any]]) -> None:
        """One message in `channel`: Block Kit `blocks`, `text` for notifications."""
        ...


Compose = Callable[[datetime], Awaitable[Digest]]  # the digest of the week up to a moment


class WeeklyDigest:
    def __init__(
        self,
        *,
        config: DigestConfig,
        channel: str,
        store: Store,
        compose: Compose,
        poster: DigestPoster,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._config = config
        self._channel = channel
        self._store = store
        self._compose = compose
        self._poster = poster
        self._zone = ZoneInfo(config.timezone)
        self.clock = clock

    async def run(self) -> None:
        """Until cancelled: keep the next digest scheduled, and post it when it falls due."""
        while True:
            try:
                await self.schedule()
                await self.post_if_due()
            except Exception:
                log.exception("digest.failed")  # the claim lapses: tried again after retry_after
                metrics.DIGESTS.labels("failed").inc()
            await asyncio.sleep(self._config.check_interval)

    async def schedule(self) -> datetime:
        """Make sure the next digest is scheduled; returns when it is due."""
        now = self.clock()
        at = await self._store.scheduled(KEY)
        if at is None or not is_occurrence(self._config, at) or at < now - WEEK:
            at = next_digest(self._config, now)
            await self._store.schedule(KEY, at)
            log.info("digest.scheduled", at=at.isoformat())
        return at

    async def post_if_due(self) -> bool:
        """Post the digest when it is due and no other worker has claimed it; True if posted."""
        due = await self._store.scheduled(KEY)
        if due is None or due > self.clock():
            return False
        claim = f"{KEY}:{due.timestamp():.0f}"
        if not await self._store.within_quota(claim, 1, self._config.retry_after):
            return False  # another worker has it (or had it and failed: its claim lapses first)
        digest = await self._compose(due)
        text, blocks = digest_text(digest, self._zone), digest_blocks(digest, self._zone)
        await self._poster.post(self._channel, text, blocks)
        following = next_digest(self._config, max(self.clock(), due))
        await self._store.schedule(KEY, following)
        metrics.DIGESTS.labels("posted").inc()
        log.info("digest.posted", channel=self._channel, due=due.isoformat(), next=following)
        return True


def next_digest(config: DigestConfig, after: datetime) -> datetime:
    """The first moment of the schedule strictly after `after` (in UTC)."""
    zone = ZoneInfo(config.timezone)
    local = after.astimezone(zone)
    ahead = (WEEKDAYS.index(config.day) - local.weekday()) % 7
    moment = datetime.combine(local.date() + timedelta(days=ahead), config.at, tzinfo=zone)
    if moment <= after:
        moment = datetime.combine(moment.date() + WEEK, config.at, tzinfo=zone)
    return moment.astimezone(UTC)


def is_occurrence(config: DigestConfig, at: datetime) -> bool:
    """True when `at` is a moment of the schedule (to the second: Redis keeps it as a float)."""
    expected = next_digest(config, at - timedelta(seconds=1))
    return abs((expected - at).total_seconds()) < 1
