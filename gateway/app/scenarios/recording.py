"""A channel that delivers nowhere and keeps what it was given (as Rasa's
`CollectingOutputChannel`): `gateway test` puts it in place of every provider, so scenarios
run the real pipeline without reaching a customer."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from gateway.channel import Capabilities, ReplyStream
from gateway.message import Outbound, RatingAsk
from gateway.split import split_text

if TYPE_CHECKING:
    from aiohttp import web


class RecordingChannel:
    """`gateway.channel.Channel` that keeps every message sent and every typing signal."""

    name: ClassVar[str] = "recording"
    capabilities: ClassVar[Capabilities] = Capabilities(text_limit=None)

    def __init__(self) -> None:
        self.sent: list[Outbound] = []
        self.typing_in: list[str] = []
        self._replies: dict[str, list[Outbound]] = {}  # Inbound.id -> the replies to it

    @property
    def connects(self) -> bool:
        return False

    @property
    def texts(self) -> list[str]:
        return [outbound.text for outbound in self.sent]

    def replies_to(self, message_id: str) -> list[Outbound]:
        """What was sent in reply to one customer message (`Inbound.id`), in order."""
        return self._replies.get(message_id, [])

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...

    def split(self, text: str) -> list[str]:
        return split_text(text, self.capabilities.text_limit)

    async def send(self, outbound: Outbound) -> None:
        self.sent.append(outbound)
        if outbound.in_reply_to is not None:
            self._replies.setdefault(outbound.in_reply_to, []).append(outbound)

    async def ask_rating(self, ask: RatingAsk) -> None:
        await self.send(ask.reply)

    async def typing(self, conversation: str) -> None:
        self.typing_in.append(conversation)

    async def stream(self, outbound: Outbound) -> ReplyStream | None:
        return None  # no growing messages: `capabilities.streaming` is off

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream | None:
        return None
