"""Redis Streams bus: one stream, one consumer group, as many worker processes as you like.

Order across processes: publishing gives each message the next sequence number of its
conversation in the same Lua call that adds it to the stream, and a worker processes message
`n` only once message `n-1` is done (see `turn`). Completion is published on a channel that
wakes waiting workers at once.

Nothing lost: an entry is acknowledged (and deleted) only after its message was handled; a
worker heart-beats the entries it holds, and entries idle longer than `claim_idle` (their
worker died) are claimed by a live worker with XAUTOCLAIM. Nothing doubled: a reclaimed entry
whose turn is already done is skipped, and the pipeline itself dedupes provider message ids.

Redis may restart empty, fail over or be flushed: a worker that finds the consumer group gone
(NOGROUP) recreates it (with the stream) and reads on; an entry it held from before is still
processed, and its completion counts only if Redis still has the entry (so a lost history never
marks new messages as done). What Redis lost is lost; nothing wedges. Pub/sub drops what is
published while a subscriber reconnects, so each (re-)subscription runs the `on_resync`
callbacks, for listeners to re-read what they wait for (see `recall`).

A message Redis lost before any worker read it can be told apart (see `lost`): its entry is no
longer on the stream, its turn was never counted done, and no worker marked it held. A worker
that finds its group gone marks the entries it still holds (it will finish them), so that a
waiter is told "lost" only about messages that nobody will ever answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from gateway.bus import Handler, Keep, Listener, Resync
from gateway.message import Inbound
from gateway.ordering import ConversationDispatcher, Turn

log = structlog.get_logger(__name__)

STREAM = "gw:inbound"
GROUP = "workers"
TURNS_CHANNEL = "gw:turns"
TOPIC_PREFIX = "gw:topic:"
KEPT_PREFIX = "gw:kept:"
HELD_PREFIX = "gw:held:"  # an entry a worker held when Redis lost its group (see `lost`)
PUBLISHED_KEPT = 10_000  # this process's latest messages whose entry `lost` can look up
READ_BATCH = 64
RETRY_SECONDS = 1.0
HANDLER_RETRIES = 4  # after 1, 2, 4 and 8 s: a Redis restart or failover is ridden out
LISTEN_POLL_SECONDS = 1.0
SUBSCRIBED_WAIT_SECONDS = 1.0  # how long a readiness ping waits for a subscription under way

_PUBLISH = """
local seq = redis.call('HINCRBY', KEYS[2], 'next', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {seq, redis.call('XADD', KEYS[1], '*', 'seq', seq, 'conv', ARGV[2], 'data', ARGV[1])}
"""

# Acknowledge, delete and count the turn done, only if the entry is still pending in the group:
# after Redis lost its data, an old entry's completion must not mark new messages as done.
_COMPLETE = """
local acked = redis.pcall('XACK', KEYS[3], ARGV[5], ARGV[4])
if acked == 1 then
  redis.call('XDEL', KEYS[3], ARGV[4])
  local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
  if tonumber(ARGV[1]) > done then redis.call('HSET', KEYS[1], 'done', ARGV[1]) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
redis.call('PUBLISH', KEYS[2], ARGV[3])
return acked == 1 and 1 or 0
"""


def _honour_cancellation() -> None:
    """Raise if this task was asked to stop.

    redis-py 8.1 can absorb a cancellation that lands mid-read (seen during aiohttp test
    shutdown: the task stays "cancelling" and its loop goes on forever). Every loop below
    returns to its top at least once a second, so checking here makes cancellation reliable.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _sequence_key(conversation: str) -> str:
    return f"gw:seq:{conversation}"


def _group_lost(error: RedisError) -> bool:
    """Redis no longer has the stream's consumer group: it restarted empty, failed over to a
    replica without it, or was flushed (UNBLOCKED: while a read was waiting on it)."""
    return isinstance(error, ResponseError) and str(error).startswith(("NOGROUP", "UNBLOCKED"))


@dataclass(frozen=True, slots=True)
class _Published:
    """Where a message this process published went: its stream entry and turn number."""

    entry_id: bytes
    conversation: str
    seq: int


class BusUnavailable(Exception):
    """The bus cannot carry messages right now (the reason is the message)."""


class _Entry:
    __slots__ = ("conversation", "entry_id", "message", "seq")

    def __init__(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        self.entry_id = entry_id
        self.seq = int(fields[b"seq"])
        self.conversation = fields[b"conv"].decode()
        self.message: Inbound | None = None
        with contextlib.suppress(ValueError):
            self.message = Inbound.model_validate_json(fields[b"data"])


class RedisBus:
    def __init__(
        self,
        redis: Redis,
        *,
        max_concurrency: int,
        claim_idle: float,
        conversation_ttl: float,
        consumer: str | None = None,
    ) -> None:
        self._redis = redis
        self._claim_idle_ms = int(claim_idle * 1000)
        self._ttl = int(conversation_ttl)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._publish = redis.register_script(_PUBLISH)
        self._complete = redis.register_script(_COMPLETE)
        self._listeners: defaultdict[str, list[Listener]] = defaultdict(list)
        self._held: set[str] = set()  # entry ids this consumer holds, heart-beaten while held
        self._handler: Handler | None = None
        self._dispatcher: ConversationDispatcher[_Entry] = ConversationDispatcher(
            self._handle, max_concurrency=max_concurrency, skip=self._ack, gate=self
        )
        self._listener_task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()  # the pub/sub connection is subscribed
        self._ever_subscribed = False  # a confirmation after the first is a re-subscription
        self._resyncs: list[Resync] = []
        self._resyncing: set[asyncio.Task[None]] = set()
        self._read_error: str | None = None  # why the last read of the stream failed, if it did
        self._published: OrderedDict[str, _Published] = OrderedDict()  # by message id

    # --- publishing ---------------------------------------------------------------------

    async def publish(self, message: Inbound) -> None:
        seq, entry_id = await self._publish(
            keys=[STREAM, _sequence_key(message.conversation)],
            args=[message.model_dump_json(), message.conversation, self._ttl],
        )
        self._published[message.id] = _Published(entry_id, message.conversation, int(seq))
        self._published.move_to_end(message.id)
        if len(self._published) > PUBLISHED_KEPT:
            self._published.popitem(last=False)

    async def lost(self, message_ids: Collection[str]) -> set[str]:
        """Those of `message_ids` (published by this process) that Redis lost unread: not on
        the stream, their turn not done, held by no worker. One round trip for them all."""
        published = [(m, self._published[m]) for m in message_ids if m in self._published]
        if not published:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, where in published:
                pipe.xrange(STREAM, where.entry_id, where.entry_id, count=1)
                pipe.hget(_sequence_key(where.conversation), "done")
                pipe.exists(HELD_PREFIX + where.entry_id.decode())
            replies = await pipe.execute()
        lost = set()
        for n, (message_id, where) in enumerate(published):
            on_stream, done, held = replies[3 * n : 3 * n + 3]
            if not on_stream and int(done or 0) < where.seq and not held:
                lost.add(message_id)
        return lost

    async def broadcast(
        self, topic: str, payload: dict[str, Any], *, keep: Keep | None = None
    ) -> None:
        data = orjson.dumps(payload)
        if keep is None:
            await self._redis.publish(TOPIC_PREFIX + topic, data)
            return
        # Kept before it is published: whoever misses the broadcast and then recalls finds it.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(KEPT_PREFIX + keep.key, data, px=max(1, int(keep.seconds * 1000)))
            pipe.publish(TOPIC_PREFIX + topic, data)
            await pipe.execute()

    async def recall(self, key: str) -> dict[str, Any] | None:
        data = await self._redis.get(KEPT_PREFIX + key)
        return orjson.loads(data) if data is not None else None

    def subscribe(self, topic: str, listener: Listener) -> None:
        self._listeners[topic].append(listener)
        self._ensure_listener()

    def on_resync(self, callback: Resync) -> None:
        self._resyncs.append(callback)
        self._ensure_listener()

    def _ensure_listener(self) -> None:
        if self._listener_task is None:
            self._listener_task = asyncio.create_task(self._listen(), name="bus:pubsub")

    # --- consuming ----------------------------------------------------------------------

    async def consume(self, handler: Handler) -> None:
        self._handler = handler
        self._ensure_listener()
        with contextlib.suppress(RedisError):  # else created by the read loop once Redis answers
            await self._ensure_group()
        background = [
            asyncio.create_task(self._heartbeat(), name="bus:heartbeat"),
            asyncio.create_task(self._reclaim(), name="bus:reclaim"),
        ]
        try:
            await self._read_new()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._dispatcher.close()

    async def _handle(self, entry: _Entry) -> None:
        assert self._handler is not None
        for attempt in range(HANDLER_RETRIES + 1):
            try:
                if entry.message is None:
                    log.error("bus.unreadable_entry", entry_id=entry.entry_id)
                else:
                    await self._handler(entry.message)
                break
            except RedisError as exc:
                # Redis itself failed mid-message. Tried again here first: a Redis that
                # restarted empty no longer has the entry for anyone to claim, and the
                # pipeline finds what an earlier attempt recorded. Then left pending, to be
                # claimed after `claim_idle` (by this worker or another).
                retry = attempt < HANDLER_RETRIES
                log.warning(
                    "bus.handler_redis_error", entry_id=entry.entry_id, error=str(exc), retry=retry
                )
                if not retry:
                    self._held.discard(entry.entry_id)
                    return
                await asyncio.sleep(RETRY_SECONDS * 2**attempt)
            except Exception:
                # Anything else is a bug the pipeline did not contain: retrying cannot help,
                # and holding the entry would block the conversation forever.
                log.exception("bus.handler_failed", entry_id=entry.entry_id)
                break
        try:
            await self._finish(entry)
        except RedisError as exc:
            # Handled but not recorded as done: claimed again after `claim_idle`, and the
            # pipeline's dedupe makes the second attempt a no-op.
            log.warning("bus.finish_failed", entry_id=entry.entry_id, error=str(exc))
            self._held.discard(entry.entry_id)

    async def turn(self, key: str, seq: int) -> Turn:
        raw_done, raw_issued = await self._redis.hmget(_sequence_key(key), ["done", "next"])
        done, issued = int(raw_done or 0), int(raw_issued or 0)
        if seq <= done:
            return Turn.DONE
        if seq == done + 1 or seq > issued:
            # seq > issued: Redis lost this conversation's counter after the entry was read
            # (restarted empty, flushed, failed over); the turn it waits for can never come.
            return Turn.READY
        return Turn.WAIT

    async def _read_new(self) -> None:
        while True:
            _honour_cancellation()
            await self._dispatcher.room()
            try:
                response = await self._redis.xreadgroup(
                    GROUP, self.consumer, {STREAM: ">"}, count=READ_BATCH, block=1000
                )
            except RedisError as exc:
                if not await self._recover(exc, "read"):
                    self._read_error = f"{type(exc).__name__}: {exc}"
                    await asyncio.sleep(RETRY_SECONDS)
                continue
            self._read_error = None
            # XREADGROUP answers [(stream, [(id, fields), ...])]; redis-py types it loosely.
            streams = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], response)
            for _stream, entries in streams or ():
                self._submit(entries)

    def _submit(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for raw_id, fields in entries:
            if not fields:  # the entry was deleted after being claimed: nothing to do
                continue
            entry = _Entry(raw_id.decode(), fields)
            if entry.entry_id in self._held:
                continue
            self._held.add(entry.entry_id)
            self._dispatcher.submit(entry.conversation, entry.seq, entry)

    async def _finish(self, entry: _Entry) -> None:
        await self._complete(
            keys=[_sequence_key(entry.conversation), TURNS_CHANNEL, STREAM],
            args=[entry.seq, self._ttl, entry.conversation, entry.entry_id, GROUP],
        )
        self._held.discard(entry.entry_id)

    async def _ack(self, entry: _Entry) -> None:
        """Drop an entry whose turn was already done (a redelivery)."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(STREAM, GROUP, entry.entry_id)
                pipe.xdel(STREAM, entry.entry_id)
                await pipe.execute()
        except RedisError as exc:  # still pending: claimed and skipped again later
            log.warning("bus.ack_failed", entry_id=entry.entry_id, error=str(exc))
        finally:
            self._held.discard(entry.entry_id)

    async def _heartbeat(self) -> None:
        """Keep the entries this worker holds from looking idle (and being claimed) while alive."""
        while True:
            await asyncio.sleep(self._claim_idle_ms / 3000)
            _honour_cancellation()
            held: list[int | bytes | str | memoryview[int]] = list(self._held)
            if not held:
                continue
            try:
                await self._redis.xclaim(STREAM, GROUP, self.consumer, 0, held, justid=True)
            except RedisError as exc:
                await self._recover(exc, "heartbeat")

    async def _reclaim(self) -> None:
        """Take over entries a dead worker left pending."""
        while True:
            await asyncio.sleep(self._claim_idle_ms / 2000)
            _honour_cancellation()
            try:
                start = "0-0"
                while True:
                    start, entries, *_ = await self._redis.xautoclaim(
                        STREAM, GROUP, self.consumer, self._claim_idle_ms, start, count=100
                    )
                    if entries:
                        log.info("bus.reclaimed", count=len(entries))
                        self._submit(entries)
                    if start in (b"0-0", "0-0"):
                        break
            except RedisError as exc:
                await self._recover(exc, "reclaim")

    async def _recover(self, error: RedisError, during: str) -> bool:
        """After a failed stream command: recreate the group if Redis lost it (True when the
        command can be retried at once), else log the failure."""
        if _group_lost(error):
            log.warning("bus.group_lost", during=during)
            try:
                await self._ensure_group()
                await self._mark_held()
                return True
            except RedisError as exc:
                error = exc
        log.warning(f"bus.{during}_failed", error=str(error))
        return False

    async def _mark_held(self) -> None:
        """Tell waiters that the entries this worker holds are not lost: it finishes them,
        though Redis no longer has them (see `lost`)."""
        if not self._held:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in self._held:
                pipe.set(HELD_PREFIX + entry_id, self.consumer, px=self._claim_idle_ms * 2)
            await pipe.execute()

    async def _ensure_group(self) -> None:
        """From the stream's first entry: what web published before the group existed (after
        Redis came back empty) is read too; acknowledged entries are deleted, so none is
        read twice."""
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            log.info("bus.group_created", stream=STREAM, group=GROUP)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _listen(self) -> None:
        """One pub/sub connection per process: turn completions and broadcast topics."""
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(TURNS_CHANNEL)
                await pubsub.psubscribe(TOPIC_PREFIX + "*")
                while True:
                    _honour_cancellation()
                    event = await pubsub.get_message(timeout=LISTEN_POLL_SECONDS)
                    if event is not None:
                        self._on_event(event)
            except RedisError as exc:
                self._subscribed.clear()
                log.warning("bus.pubsub_lost", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "psubscribe":
            # Confirms the first subscription and every re-subscription, including those the
            # client makes by itself after a dropped connection: after a re-subscription,
            # broadcasts may have been missed in between. (Before the first, nothing was
            # listening; waiters that started then re-read their results on their own timer.)
            self._subscribed.set()
            if self._ever_subscribed:
                self._resync()
            self._ever_subscribed = True
            return
        if kind not in ("message", "pmessage"):
            return
        channel = event["channel"].decode()
        if channel == TURNS_CHANNEL:
            self._dispatcher.wake(event["data"].decode())
            return
        topic = channel.removeprefix(TOPIC_PREFIX)
        payload = orjson.loads(event["data"])
        for listener in self._listeners.get(topic, ()):
            try:
                listener(payload)
            except Exception:
                log.exception("bus.listener_failed", topic=topic)

    def _resync(self) -> None:
        for callback in self._resyncs:
            task = asyncio.create_task(_run_resync(callback), name="bus:resync")
            self._resyncing.add(task)
            task.add_done_callback(self._resyncing.discard)

    # --- lifecycle ----------------------------------------------------------------------

    async def ping(self) -> None:
        """Redis answers, the workers' group exists, this process's stream reads (when it
        consumes) and its pub/sub subscription (when it listens) work."""
        await self._redis.ping()
        if self._read_error is not None:
            raise BusUnavailable(f"cannot read {STREAM}: {self._read_error}")
        try:
            groups = await self._redis.xinfo_groups(STREAM)
        except ResponseError:  # no stream at all
            groups = []
        if not any(group["name"] in (GROUP, GROUP.encode()) for group in groups):
            raise BusUnavailable(
                f"no consumer group {GROUP!r} on {STREAM} (Redis lost its data?): "
                "a worker recreates it within seconds"
            )
        if self._listener_task is not None:
            try:
                await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBED_WAIT_SECONDS)
            except TimeoutError:
                raise BusUnavailable("no pub/sub subscription: broadcasts cannot arrive") from None

    async def close(self) -> None:
        tasks = [*self._resyncing, *([self._listener_task] if self._listener_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run_resync(callback: Resync) -> None:
    try:
        await callback()
    except Exception:
        log.exception("bus.resync_failed")
