"""The defaults every channel shares: its config section and context, no routes, no
connection, no typing indicator, splitting at the channel's text limit.

A channel subclasses `BaseChannel[ItsConfig]`, sets `name` (its key under `channels:`) and
`capabilities`, and implements `send` (and `stream`, when it declares `streaming`);
`gateway.channel.Channel` is what the core sees of it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from gateway.channel import Capabilities, ChannelContext, ReplyStream
from gateway.config import Section
from gateway.message import Outbound, RatingAsk
from gateway.split import split_text


class ChannelSection(Section):
    """A channel's section under `channels:`; channels with credentials are off by default."""

    enabled: bool = False


class ChannelToggle(ChannelSection):
    """The section of a channel that needs nothing to run: on unless switched off."""

    enabled: bool = True


ConfigT = TypeVar("ConfigT", bound=ChannelSection)


class BaseChannel(ABC, Generic[ConfigT]):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, config: ConfigT, context: ChannelContext) -> None:
        self.config = config
        self.context = context

    def routes(self) -> list[web.RouteDef]:
        return []

    @property
    def connects(self) -> bool:
        return type(self).start is not BaseChannel.start

    async def start(self) -> None:
        """Open long-lived provider connections (connectors role); HTTP-only channels need none."""

    async def stop(self) -> None:
        """Close what `start` opened."""

    async def close(self) -> None:
        """Release the clients `send` uses (HTTP sessions); called once when the runtime closes."""

    def split(self, text: str) -> list[str]:
        return split_text(text, self.capabilities.text_limit)

    @abstractmethod
    async def send(self, outbound: Outbound) -> None:
        """Deliver one message (one part of `split`) to the customer."""

    async def typing(self, conversation: str) -> None:
        """Show that an answer is being prepared, where the channel can."""

    async def stream(self, outbound: Outbound) -> ReplyStream | None:
        """A message that grows, on channels with `capabilities.streaming`; None by default."""
        return None

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream | None:
        """A growing message a dead worker left; None by default (sent whole again)."""
        return None

    async def ask_rating(self, ask: RatingAsk) -> None:
        """The question and how to answer it, as text: the customer replies with the score."""
        await self.send_all(ask.reply.model_copy(update={"text": f"{ask.reply.text}\n{ask.hint}"}))

    async def send_all(self, outbound: Outbound) -> None:
        """`outbound` in the parts `split` cuts it into."""
        for part in self.split(outbound.text):
            await self.send(outbound.model_copy(update={"text": part}))

    @classmethod
    def credential_checks(cls, config: ConfigT) -> list[CredentialCheck]:
        """What `gateway check` asks the provider to prove the section's credentials; none by
        default (channels without credentials)."""
        return []


class CheckFailed(Exception):
    """What the provider refused in a credentials check, in words for the operator; never a
    secret."""


@dataclass(frozen=True, slots=True)
class CredentialCheck:
    """One exchange with a provider that proves a credential. `gateway check` runs the checks
    of all enabled channels at once, each under its timeout; a timeout or a connection failure
    is reported against `address`, so the check itself explains only the provider's answer."""

    address: str  # the URL or host:port the exchange goes to
    run: Callable[[], Awaitable[str]]  # a detail for the table; raises CheckFailed when refused
    label: str = ""  # which of a channel's checks ("IMAP", "app token"), when it has several

    @property
    def host(self) -> str:
        return urlsplit(self.address).netloc if "://" in self.address else self.address


def parse_json(data: str | bytes) -> Any:
    """JSON from a client; `ValueError` for whatever is not: bad syntax, bytes that are not
    UTF-8, or nesting deeper than the parser's recursion limit (a `RecursionError` otherwise)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None
