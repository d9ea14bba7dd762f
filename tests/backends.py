"""Build the bus and store of either backend, so one contract suite runs against both."""

from __future__ import annotations

from redis.asyncio import Redis

from gateway.bus import Bus
from gateway.bus.memory import MemoryBus
from gateway.bus.redis import STREAM, RedisBus
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

BACKENDS = ("memory", "redis")


def make_bus(
    backend: str, redis: Redis | None, *, max_concurrency: int = 64, **options: float
) -> Bus:
    if backend == "memory":
        return MemoryBus(max_concurrency=max_concurrency)
    assert redis is not None
    return RedisBus(
        redis,
        max_concurrency=max_concurrency,
        claim_idle=options.get("claim_idle", 30.0),
        conversation_ttl=3600,
    )


def make_store(backend: str, redis: Redis | None, *, dedupe_ttl: float = 86_400) -> Store:
    if backend == "memory":
        return MemoryStore(dedupe_ttl=dedupe_ttl, conversation_ttl=3600)
    assert redis is not None
    return RedisStore(redis, dedupe_ttl=dedupe_ttl, conversation_ttl=3600)


async def queued_ids(bus: Bus, redis: Redis | None) -> list[str]:
    """Ids of the messages waiting on the bus, in the order the bus received them."""
    if isinstance(bus, MemoryBus):
        return [message.id for message in bus._queue._queue]  # type: ignore[attr-defined]
    assert redis is not None
    from gateway.message import Inbound

    return [
        Inbound.model_validate_json(fields[b"data"]).id
        for _id, fields in await redis.xrange(STREAM)
    ]
