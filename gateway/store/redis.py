"""Redis store: conversation state as JSON, the transcript as a list, dedupe marks with a TTL.

Every key of a conversation gets its TTL refreshed on each write, so idle conversations expire
together and nothing accumulates.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import cast

from redis.asyncio import Redis

from gateway.message import Conversation, TranscriptEntry

PREFIX = "gw"
SCHEDULE = f"{PREFIX}:schedule"  # sorted set: conversation key scored by its due epoch


class RedisStore:
    def __init__(self, redis: Redis, *, dedupe_ttl: float, conversation_ttl: float) -> None:
        self._redis = redis
        self._dedupe_ttl = int(dedupe_ttl)
        self._conversation_ttl = int(conversation_ttl)

    async def is_processed(self, dedupe_key: str) -> bool:
        return bool(await self._redis.exists(f"{PREFIX}:processed:{dedupe_key}"))

    async def mark_processed(self, dedupe_key: str) -> None:
        await self._redis.set(f"{PREFIX}:processed:{dedupe_key}", 1, ex=self._dedupe_ttl)

    async def save_response(self, dedupe_key: str, response: str) -> None:
        await self._redis.set(f"{PREFIX}:response:{dedupe_key}", response, ex=self._dedupe_ttl)

    async def saved_response(self, dedupe_key: str) -> str | None:
        raw = await self._redis.get(f"{PREFIX}:response:{dedupe_key}")
        return raw.decode() if isinstance(raw, bytes) else raw

    async def load(self, key: str) -> Conversation | None:
        raw = await self._redis.get(f"{PREFIX}:conversation:{key}")
        return Conversation.model_validate_json(raw) if raw else None

    async def save(self, conversation: Conversation) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:  # one round trip
            pipe.set(
                f"{PREFIX}:conversation:{conversation.key}",
                conversation.model_dump_json(),
                ex=self._conversation_ttl,
            )
            pipe.expire(f"{PREFIX}:transcript:{conversation.key}", self._conversation_ttl)
            await pipe.execute()

    async def append(self, key: str, entry: TranscriptEntry) -> None:
        transcript_key = f"{PREFIX}:transcript:{key}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(transcript_key, entry.model_dump_json())
            pipe.expire(transcript_key, self._conversation_ttl)
            pipe.expire(f"{PREFIX}:conversation:{key}", self._conversation_ttl)
            await pipe.execute()

    async def transcript(self, key: str, last: int | None = None) -> list[TranscriptEntry]:
        start = -last if last else 0
        raw = await self._redis.lrange(f"{PREFIX}:transcript:{key}", start, -1)
        return [TranscriptEntry.model_validate_json(item) for item in raw]

    async def link_thread(self, thread: str, conversation: str) -> None:
        await self._redis.set(f"{PREFIX}:thread:{thread}", conversation, ex=self._conversation_ttl)

    async def thread_conversation(self, thread: str) -> str | None:
        raw = await self._redis.get(f"{PREFIX}:thread:{thread}")
        return raw.decode() if isinstance(raw, bytes) else raw

    async def schedule(self, key: str, at: datetime) -> None:
        await self._redis.zadd(SCHEDULE, {key: at.timestamp()})

    async def due(self, now: datetime, limit: int) -> list[tuple[str, datetime]]:
        raw = await self._redis.zrangebyscore(
            SCHEDULE, "-inf", now.timestamp(), start=0, num=limit, withscores=True
        )
        pairs = cast(list[tuple[bytes | str, float]], raw)  # withscores: (member, score)
        return [
            (key.decode() if isinstance(key, bytes) else key, datetime.fromtimestamp(score, UTC))
            for key, score in pairs
        ]

    async def scheduled(self, key: str) -> datetime | None:
        score = await self._redis.zscore(SCHEDULE, key)
        return None if score is None else datetime.fromtimestamp(score, UTC)

    async def unschedule(self, key: str) -> None:
        await self._redis.zrem(SCHEDULE, key)

    async def within_quota(self, key: str, limit: int, window: float) -> bool:
        quota = f"{PREFIX}:quota:{hashlib.sha256(key.encode()).hexdigest()}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(quota, 0, px=int(window * 1000), nx=True)
            pipe.incr(quota)
            _, count = await pipe.execute()
        return int(count) <= limit

    async def forget(self, key: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{PREFIX}:conversation:{key}", f"{PREFIX}:transcript:{key}")
            pipe.zrem(SCHEDULE, key)
            await pipe.execute()

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        return None  # the connection pool belongs to the runtime that opened it
