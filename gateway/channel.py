"""What a channel is to the core, and the narrow context the core gives every channel.

A channel translates at the edge: provider payload in, one `Inbound` out (published through
its `ChannelContext`); one `Outbound` in, provider API call out. It declares what it can do
(`Capabilities`), and the pipeline adapts to that; channels never branch on each other, and
never see the runtime or the whole config: only their own section and this context.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, SecretStr

from gateway import topics
from gateway.admission import Admission
from gateway.bus import Bus
from gateway.message import (
    Conversation,
    Inbound,
    Outbound,
    RatingAsk,
    Role,
    TranscriptEntry,
    TurnResult,
)
from gateway.results import TurnResults
from gateway.store import Store
from gateway.topics import DeliveryReport, Topic

if TYPE_CHECKING:  # the core runs without the HTTP stack; only `web` processes mount routes
    from aiohttp import web

PayloadT = TypeVar("PayloadT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Capabilities:
    text_limit: int | None  # characters per message; None: no limit, never split
    typing: bool = False  # the channel can show that an answer is being prepared
    streaming: bool = False  # the channel can show a message that grows (`Channel.stream`)
    # Satisfaction is rated on a page of ours (the email's signed link), which thanks the
    # customer itself: the pipeline sends no thanks message after such a rating.
    rating_page: bool = False


class ReplyStream(Protocol):
    """One bot message that grows on the customer's screen while its answer is written.

    The pipeline appends text only once the policy check passed it, and ends the stream with
    `finish` or `replace`, exactly once (`gateway/streaming.py`)."""

    async def append(self, text: str) -> None:
        """Show `text` after what the message shows."""
        ...

    async def finish(self, reply: Outbound) -> None:
        """The message is complete as shown; `reply` is it whole (its text and sources)."""
        ...

    async def replace(self, reply: Outbound) -> None:
        """The message reads `reply.text` instead of what it showed, and is complete."""
        ...

    @property
    def handle(self) -> dict[str, str]:
        """What finds this message again (`Channel.resume`) if the worker writing it dies."""
        ...


class Channel(Protocol):
    """One customer channel, built by the composition root as `Channel(config, context)`."""

    name: ClassVar[str]  # the config key under `channels:`
    capabilities: ClassVar[Capabilities]

    def routes(self) -> list[web.RouteDef]:
        """HTTP routes (webhooks, pages) mounted on the `web` process."""
        ...

    @property
    def connects(self) -> bool:
        """Whether `start` opens a long-lived provider connection (the connectors role)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Close what `start` opened."""
        ...

    async def close(self) -> None:
        """Release the clients `send` uses; called once when the runtime closes."""
        ...

    def split(self, text: str) -> list[str]:
        """Cut a reply into the messages `send` delivers, to the channel's limits."""
        ...

    async def send(self, outbound: Outbound) -> None:
        """Deliver one message (one part of `split`) to the customer."""
        ...

    async def typing(self, conversation: str) -> None:
        """Show that an answer is being prepared, where the channel can."""
        ...

    async def stream(self, outbound: Outbound) -> ReplyStream | None:
        """Show `outbound` (the first sentences of a reply) as a message that will grow; None
        where this conversation cannot show one (a Telegram group), so it is sent whole."""
        ...

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream | None:
        """The growing message a worker that died left unfinished (its `ReplyStream.handle`),
        for the worker answering the message again to end (`replace`) instead of starting a
        second one; None where it cannot be found again."""

    async def ask_rating(self, ask: RatingAsk) -> None:
        """Ask the customer to rate the help they got, 1 to 5, the channel's own way: buttons
        that publish a RATING event with `ask.id`, a link, or the question and `ask.hint`
        (the customer's next message is then the score)."""
        ...


@dataclass(frozen=True, slots=True)
class Limits:
    """The few gateway-wide settings channels honour."""

    max_message_chars: int  # a customer's message longer than this is refused
    reply_timeout: float  # how long a request/response channel waits for its answer
    api_token: SecretStr | None  # the bearer token of /api/*; None: open
    note_prefix: str  # an agent's thread reply starting with it is an internal note
    retry_after: int  # seconds a refused request is asked to wait (Retry-After)


class ChannelContext:
    """Everything a channel may use of the gateway: publishing (admitted or not), typed
    broadcasts, a few store reads and the few writes channels make (notes, marks, quotas)."""

    def __init__(
        self,
        *,
        bus: Bus,
        store: Store,
        results: TurnResults,
        admission: Admission,
        limits: Limits,
        data_dir: Path,
    ) -> None:
        self._bus = bus
        self._admission = admission
        self._store = store
        self._results = results
        self.limits = limits
        self.data_dir = data_dir  # where a channel may keep a file of its own (a signing key)

    async def publish(self, message: Inbound) -> None:
        """Put a message on the bus; returns once it is durable, so it may be acknowledged."""
        await self._bus.publish(message)

    async def admit(self, message: Inbound) -> bool:
        """For request/response channels (REST, web chat): publish the message if this process
        has room for one more in flight; False, nothing published, when it has not (the
        channel asks the customer to retry after `limits.retry_after` seconds)."""
        return await self._admission.publish(message)

    async def broadcast(self, topic: Topic[PayloadT], payload: PayloadT) -> None:
        await topics.broadcast(self._bus, topic, payload)

    def subscribe(self, topic: Topic[PayloadT], listener: Callable[[PayloadT], None]) -> None:
        topics.subscribe(self._bus, topic, listener)

    def on_resync(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call `callback` whenever broadcasts may have been missed (the bus reconnected)."""
        self._bus.on_resync(callback)

    def await_result(self, message_id: str) -> AbstractContextManager[asyncio.Future[TurnResult]]:
        """Enter before publishing `message_id`, then await the future for its `TurnResult`."""
        return self._results.expect(message_id)

    async def conversation(self, key: str) -> Conversation | None:
        return await self._store.load(key)

    async def transcript(self, key: str, last: int | None = None) -> list[TranscriptEntry]:
        return await self._store.transcript(key, last)

    async def thread_conversation(self, thread: str) -> str | None:
        """The conversation an agents' thread belongs to (`Store.link_thread`)."""
        return await self._store.thread_conversation(thread)

    async def seen(self, mark: str) -> bool:
        """Whether `mark` (a provider event id) was recorded by `remember` within a day."""
        return await self._store.is_processed(mark)

    async def remember(self, mark: str) -> None:
        await self._store.mark_processed(mark)

    async def saved_response(self, key: str) -> str | None:
        """The response saved for a request key (an `Idempotency-Key`), to replay it."""
        return await self._store.saved_response(key)

    async def save_response(self, key: str, response: str) -> None:
        await self._store.save_response(key, response)

    async def within_quota(self, key: str, limit: int, window: float) -> bool:
        """Count one use of `key`; False once it was used `limit` times in this `window`."""
        return await self._store.within_quota(key, limit, window)

    async def note(self, conversation: str, text: str) -> None:
        """A system line in the conversation's transcript (what happened, not what was said)."""
        await self._store.append(conversation, TranscriptEntry(role=Role.SYSTEM, text=text))

    async def report_undelivered(self, report: DeliveryReport) -> None:
        """A reply found undelivered after the fact: noted in the transcript, and announced
        on the bus, where the hand-off relay picks it up for the agents' thread."""
        await self.note(report.conversation, report.detail)
        await self.broadcast(topics.DELIVERY, report)
