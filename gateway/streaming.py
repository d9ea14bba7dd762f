"""First response now, complete answer next: a reply on its way while it is still worked out.

The pipeline opens one `LiveReply` for each customer message it answers, and hands it to the
answerer as the `Draft` its reply is written into. Before the turn ends the customer may see:

- the reply's first sentences, where the channel shows a growing message
  (`Capabilities.streaming`): each sentence is released once it is complete and the policy
  check passed the text up to its end, and appended to the channel's `ReplyStream`. A sentence
  that breaks the policy releases nothing more: `wait_for` stops the answerer, and the
  pipeline's policy escalation replaces what was shown;
- a holding line ("One moment…"), when the answer is being worked out (`wait_for`) and nothing
  was released by the first-response deadline, or earlier, when the answerer knows a step it
  has just begun will outlast that deadline (`hold`: "Let me check that for you…" as a tool
  call starts): a message of its own, recorded as the turn's
  first part (`TranscriptEntry.holding`), so a worker that takes the message over after a
  crash does not say it again. A message that reaches the answerer past that deadline already
  (a backlog, a cold start's first search) is answered as soon as it can be, without one.

`finish` then sends the complete reply: the rest of the stream, or a replacement of what was
shown where the reply ended otherwise (a policy escalation, the offline fallback), or, on a
channel that cannot stream (SMS, WhatsApp, email, REST), the whole text once.

Nothing here knows who writes the draft: anything slow that produces a reply (a model, a tool
call) writes text into it as it becomes known, or writes nothing and lets the holding line
cover the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

import structlog

from gateway.answering import PolicyCheck, Violation
from gateway.channel import Channel, ReplyStream
from gateway.delivery import Timing, deliver, note_failure, record
from gateway.message import Outbound, Source, utcnow
from gateway.store import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Where a sentence ends: its closing punctuation (and quotes or brackets) before a space, or
# the last character before a line break. The space stays with the next sentence.
_SENTENCE_END = re.compile(r"[.!?…][\"'\u201d\u2019)\]]*(?=\s)|\S(?=\n)")


class LiveReply:
    """One reply to one customer message: drafted, released sentence by sentence, finished."""

    def __init__(
        self,
        *,
        channel: Channel | None,
        store: Store,
        policy: PolicyCheck,
        reply: Outbound,
        received_at: datetime,
        first_response: float,
        wait: str | None,
    ) -> None:
        """`reply` addresses the answer (its text is filled in later); `wait` is the holding
        line said `first_response` seconds after `received_at` if nothing was shown by then
        (None: not at all, it was said already)."""
        self._first_response = first_response
        self._channel = channel
        self._store = store
        self._policy = policy
        self._reply = reply
        self._received_at = received_at
        self._wait = wait
        self._streams = channel is not None and channel.capabilities.streaming
        self._limit = channel.capabilities.text_limit if channel is not None else None
        self._draft = ""  # the reply so far, as the answerer wrote it
        self._released = 0  # characters of the draft the policy check passed
        # The knowledge-base passages the answer is drawn from (the policy's `quotes`), set
        # once they are retrieved.
        self.quotes: tuple[str, ...] = ()
        self._shown = ""  # what the growing message shows
        self._stream: ReplyStream | None = None
        self._resumed = False  # `_stream` is a message a dead worker left growing
        self._pump: asyncio.Task[None] | None = None  # sends released text, in order
        self._more = asyncio.Event()
        self._blocked = asyncio.Event()
        self._closed = False
        self._parts: list[str] = []  # the messages sent before the answer (the holding line)
        self._holding: asyncio.Task[None] | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self.violation: Violation | None = None
        self.first_shown_at: datetime | None = None

    @property
    def first_response_ms(self) -> float | None:
        """Milliseconds from the message's receipt to the first text the customer saw."""
        if self.first_shown_at is None:
            return None
        return round((self.first_shown_at - self._received_at).total_seconds() * 1000, 2)

    # The draft (gateway.answering.Draft)

    def grow(self, text: str) -> None:
        if not self._streams or self._closed or self.violation is not None:
            return
        if not text.startswith(self._draft[: self._released]):
            return  # a retry's or a fallback's text: what was released stands; `finish` settles
        self._draft = text
        end = max((m.end() for m in _SENTENCE_END.finditer(text, self._released)), default=0)
        if end <= self._released or (self._limit is not None and end > self._limit):
            return
        violation = self._policy.check(text[:end], self.quotes)
        if violation is not None:
            log.warning("streaming.policy_blocked", rule=violation.rule, why=violation.why)
            self.violation = violation
            self._blocked.set()
            return
        self._released = end
        if self._pump is None:
            self._pump = asyncio.create_task(self._push())
        self._more.set()

    def hold(self, text: str) -> None:
        if self._wait is None or self._holding is not None:
            return  # said already (before a crash, or just now)
        self._hold(text)

    async def resume(self) -> None:
        """For a message a worker that died left half-done: find the growing message it was
        writing, if any, so the answer ends that one (`replace`) instead of opening a second.
        Nothing more is shown before the answer is whole, and no holding line is said (the
        customer saw the start of an answer)."""
        if not self._streams or self._channel is None:
            return
        saved = await self._store.saved_response(self._stream_key)
        if saved is None:
            return
        stream = await self._channel.resume(self._reply, json.loads(saved))
        if stream is not None:
            log.info("streaming.resumed", channel=self._reply.channel)
            self._stream, self._resumed, self._streams, self._wait = stream, True, False, None

    async def wait_for(self, work: Awaitable[T]) -> T | None:
        """What `work` (whatever works out the reply) returns, the holding line said meanwhile
        at the first-response deadline if nothing was shown by then; None, `work` cancelled,
        as soon as a drafted sentence broke the policy (`violation`): the rest of that answer
        is not worth waiting for."""
        left = self._first_response - (utcnow() - self._received_at).total_seconds()
        if self._wait is not None and left > 0 and self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(left, self._hold, self._wait)
        task = asyncio.ensure_future(work)
        blocked = asyncio.create_task(self._blocked.wait())
        try:
            await asyncio.wait((task, blocked), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the turn itself was cancelled: nothing more is said
            self._closed = True
            raise
        finally:
            blocked.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return None if task.cancelled() else task.result()

    # The customer's side

    async def finish(self, text: str, sources: tuple[Source, ...] = ()) -> tuple[str, ...]:
        """Send the complete reply `text` (what the customer has not seen of it) and record it;
        the messages sent this turn, holding line first."""
        self._closed = True
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        if self._holding is not None:
            await self._holding
        if self._pump is not None:
            self._more.set()
            await self._pump
        if self._stream is None:
            if not text:
                return tuple(self._parts)
            reply = self._reply.model_copy(update={"text": text, "sources": sources})
            delivered = await deliver(self._channel, self._store, reply, timing=self._timing())
            if delivered.parts:
                self._shown_now()
            return (*self._parts, *delivered.parts)
        return (*self._parts, *await self._end_stream(self._stream, text or self._shown, sources))

    async def _end_stream(
        self, stream: ReplyStream, text: str, sources: tuple[Source, ...]
    ) -> tuple[str, ...]:
        """The growing message ends as the reply's first part reads; the parts past the
        channel's limit follow as messages of their own."""
        assert self._channel is not None  # a stream is opened only on a channel
        reply = self._reply.model_copy(update={"text": text, "sources": sources})
        first, *rest = self._channel.split(text) or [text]
        try:
            if not self._resumed and first.startswith(self._shown):
                if first != self._shown:
                    await stream.append(first[len(self._shown) :])
                await stream.finish(reply.model_copy(update={"text": first}))
            else:
                await stream.replace(reply.model_copy(update={"text": first}))
            for part in rest:
                await self._channel.send(reply.model_copy(update={"text": part}))
        except Exception as error:
            return (await note_failure(self._store, reply, error)).parts
        await record(self._store, reply, timing=self._timing())
        return (first, *rest)

    async def _push(self) -> None:
        """Open the stream with the first released sentences, then append the next ones."""
        assert self._channel is not None  # text is released only on a streaming channel
        while not (self._closed and not self._more.is_set()):
            await self._more.wait()
            self._more.clear()
            chunk = self._draft[len(self._shown) : self._released]
            if not chunk:
                continue
            try:
                if self._stream is None:
                    opening = self._reply.model_copy(update={"text": chunk})
                    self._stream = await self._channel.stream(opening)
                    if self._stream is None:
                        self._streams = False  # not in this conversation: sent whole at the end
                        return
                    # Where a worker that takes the message over finds it (`resume`).
                    handle = json.dumps(self._stream.handle)
                    await self._store.save_response(self._stream_key, handle)
                else:
                    await self._stream.append(chunk)
            except Exception:
                # What was shown stays; the answer is sent whole at the end (`finish`).
                log.warning("streaming.stream_failed", channel=self._reply.channel, exc_info=True)
                self._streams, self._stream = False, None
                return
            self._shown += chunk
            self._shown_now()

    def _hold(self, text: str) -> None:
        if self._released or self._closed or self._holding is not None:
            return
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self._holding = asyncio.create_task(self._say_holding(text))

    async def _say_holding(self, text: str) -> None:
        line = self._reply.model_copy(update={"text": text})
        delivered = await deliver(self._channel, self._store, line, holding=True)
        if delivered.parts:
            self._shown_now()
            self._parts.extend(delivered.parts)

    @property
    def _stream_key(self) -> str:
        return f"stream:{self._reply.conversation}:{self._reply.in_reply_to}"

    def _shown_now(self) -> None:
        if self.first_shown_at is None:
            self.first_shown_at = utcnow()
            if self._hold_timer is not None:
                self._hold_timer.cancel()

    def _timing(self) -> Timing:
        return Timing(self._received_at, self.first_shown_at)
