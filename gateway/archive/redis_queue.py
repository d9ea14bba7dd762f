"""The archive's queue on a Redis stream, shared by every worker: nothing is lost on a crash.

An entry is deleted only after the batch holding it committed (`ack`). A writer first re-takes
what it holds unacknowledged (its last write failed), then entries a dead writer left idle for
`claim_idle`, then new ones.
"""

from __future__ import annotations

from typing import cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.archive import ArchiveEvent
from gateway.archive.queue import Taken

log = structlog.get_logger(__name__)

STREAM = "gw:archive"
GROUP = "archivers"

_Entries = list[tuple[bytes, dict[bytes, bytes] | None]]


class RedisArchiveQueue:
    def __init__(self, redis: Redis, *, consumer: str, claim_idle: float) -> None:
        self._redis = redis
        self._consumer = consumer
        self._claim_idle_ms = int(claim_idle * 1000)
        self._grouped = False

    async def put(self, event: ArchiveEvent) -> None:
        await self._redis.xadd(STREAM, {"data": event.model_dump_json()})

    async def take(self, limit: int, wait: float) -> list[Taken]:
        try:
            return await self._take(limit, wait)
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            self._grouped = False  # Redis restarted empty or was flushed
            return await self._take(limit, wait)

    async def _take(self, limit: int, wait: float) -> list[Taken]:
        if not self._grouped:
            await self._ensure_group()
        held = await self._read("0", limit, block=None)  # taken before, not acknowledged
        if held:
            return held
        _start, claimed, *_ = await self._redis.xautoclaim(
            STREAM, GROUP, self._consumer, self._claim_idle_ms, "0-0", count=limit
        )
        if claimed:
            log.info("archive.reclaimed", count=len(claimed))
            return await self._decode(cast(_Entries, claimed))
        return await self._read(">", limit, block=max(1, int(wait * 1000)))

    async def _read(self, start: str, limit: int, *, block: int | None) -> list[Taken]:
        response = await self._redis.xreadgroup(
            GROUP, self._consumer, {STREAM: start}, count=limit, block=block
        )
        streams = cast(list[tuple[bytes, _Entries]], response or [])
        return await self._decode([entry for _stream, entries in streams for entry in entries])

    async def _decode(self, entries: _Entries) -> list[Taken]:
        taken, empty = [], []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if not fields:  # deleted since (acknowledged by another writer): drop it
                empty.append(entry_id)
                continue
            taken.append(Taken(entry_id, ArchiveEvent.model_validate_json(fields[b"data"])))
        if empty:
            await self._drop(empty)
        return taken

    async def ack(self, taken: list[Taken]) -> None:
        if taken:
            await self._drop([item.token for item in taken])

    async def _drop(self, entry_ids: list[str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(STREAM, GROUP, *entry_ids)
            pipe.xdel(STREAM, *entry_ids)
            await pipe.execute()

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped = True
