"""The one way the gateway connects to Redis."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_MAX_CONNECTIONS = 64


def connect_redis(url: str) -> Redis:
    """A client that retries dropped connections with backoff instead of failing the message.

    The pool blocks when all connections are busy: a burst waits its turn instead of failing.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        health_check_interval=30,
        socket_connect_timeout=5,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
