"""Discord (discord.py): the gateway connection runs in the connectors process; replies go out
over Discord's REST API from whichever process sends them.

(Named `discord_channel` so that it never shadows the `discord` package; the registry and config
key is `discord`.) Customers reach the bot in DMs, and in guild channels and threads by
mentioning it; each sender in a guild channel is their own conversation, answered as a reply to
their message. Rate limits are discord.py's business: its HTTP client waits out every 429.

A bot answer is streamed by posting its first sentences and editing the message as it grows,
at most once per `EDIT_INTERVAL` (Discord allows about five edits per five seconds in a
channel), the last edit making it read as the complete answer.

The satisfaction ask is a message with five buttons (message components, custom ids
`rate:<ask id>:<score>`); a press arrives as an INTERACTION_CREATE on the gateway, is published
as a RATING event of the presser's conversation, and answered by redrawing the buttons disabled,
the pressed one green (https://discord.com/developers/docs/interactions/receiving-and-responding).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import warnings
from typing import Any

import structlog
import yarl
from pydantic import Field, SecretStr, model_validator

from adapters.base import BaseChannel, ChannelSection, CheckFailed, CredentialCheck
from gateway.channel import Capabilities, ChannelContext, ReplyStream
from gateway.config import Seconds, secret
from gateway.message import (
    SCORES,
    Attachment,
    ConversationKey,
    Identity,
    IdentityKind,
    Inbound,
    Outbound,
    Rating,
    RatingAsk,
    conversation_key,
)

with warnings.catch_warnings():
    # discord.py's voice player imports the stdlib `audioop`, deprecated since Python 3.11
    # (PEP 594); this gateway never plays audio, and tests turn warnings into errors.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord
    from discord.gateway import DiscordWebSocket
    from discord.http import HTTPClient, Route, handle_message_parameters


log = structlog.get_logger(__name__)

CHANNEL = "discord"
READY_TIMEOUT = 60.0  # seconds start() waits for the gateway's READY
# Bots mention nobody on a customer's behalf: no @everyone, roles or users, only the reply ping.
ALLOWED_MENTIONS = discord.AllowedMentions(
    everyone=False, users=False, roles=False, replied_user=True
)
_ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)
EDIT_INTERVAL = 1.0  # seconds between two edits of a streamed message


class DiscordConfig(ChannelSection):
    bot_token: SecretStr | None = Field(default_factory=lambda: secret("DISCORD_BOT_TOKEN"))
    api_url: str = "https://discord.com/api/v10"
    watchdog_seconds: Seconds = Field(
        default=900.0, description="no gateway event for this long: force a reconnect (resume)"
    )

    @model_validator(mode="after")
    def _usable(self) -> DiscordConfig:
        if self.enabled and self.bot_token is None:
            raise ValueError("bot_token is required when enabled (set DISCORD_BOT_TOKEN)")
        return self


class MessageContentIntentMissing(RuntimeError):
    """The gateway closed with 4014: the application may not read message content."""

    def __init__(self) -> None:
        super().__init__(
            "Discord refused the privileged Message Content intent (gateway close 4014). "
            "Enable it in the Developer Portal: https://discord.com/developers/applications "
            "-> your application -> Bot -> Privileged Gateway Intents -> Message Content Intent, "
            "then restart the connectors process."
        )


class DiscordChannel(BaseChannel[DiscordConfig]):
    name = CHANNEL
    # 2000 characters of content: https://discord.com/developers/docs/resources/message#create-message
    capabilities = Capabilities(text_limit=2000, typing=True, streaming=True)

    @classmethod
    def credential_checks(cls, config: DiscordConfig) -> list[CredentialCheck]:
        async def users_me() -> str:  # GET /users/@me, discord.py's own login
            assert config.bot_token is not None  # the config refuses an enabled channel without
            Route.BASE = config.api_url.rstrip("/")  # process-wide, as in `__init__`
            rest = HTTPClient(asyncio.get_running_loop())
            try:
                me = await rest.static_login(config.bot_token.get_secret_value())
            except discord.LoginFailure:
                raise CheckFailed("bot token rejected (401 Unauthorized)") from None
            finally:
                await rest.close()
            return f"bot {me['username']} ({me['id']})"

        return [CredentialCheck(config.api_url, users_me)]

    def __init__(self, config: DiscordConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        if config.bot_token is None:  # the config refuses an enabled channel without one
            raise ValueError("channels.discord.bot_token is not set (DISCORD_BOT_TOKEN)")
        self._token = config.bot_token.get_secret_value()
        # Every discord.py request builds its URL from the class attribute `Route.BASE` (the
        # library itself reassigns it to switch API versions), and there is no per-client
        # setting; a process serves one Discord application, so one process-wide value is safe.
        Route.BASE = config.api_url.rstrip("/")
        self._rest: HTTPClient | None = None  # logged in on first send
        self._rest_login = asyncio.Lock()
        self._client: _GatewayClient | None = None
        self._connection: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_event = time.monotonic()
        # discord.py runs each event handler as its own task; publishing under a (FIFO) lock keeps
        # one customer's quick messages in the order Discord sent them.
        self._publishing = asyncio.Lock()

    # Sending (any process): REST only, no gateway connection.

    async def send(self, outbound: Outbound) -> None:
        await self._post(outbound)

    async def ask_rating(self, ask: RatingAsk) -> None:
        await self._post(ask.reply, view=_rating_view(ask.id))

    async def stream(self, outbound: Outbound) -> ReplyStream:
        posted = await self._post(outbound)
        return DiscordEdits(self, _channel_id(outbound.conversation), posted, outbound.text)

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream:
        # What it shows is unknown (taken as nothing): the final edit writes the whole reply.
        return DiscordEdits(self, int(handle["channel_id"]), handle["message_id"], "")

    async def _edit(self, channel_id: int, message_id: str, text: str) -> None:
        rest = await self._http()
        with handle_message_parameters(content=text, allowed_mentions=ALLOWED_MENTIONS) as params:
            await rest.edit_message(channel_id, message_id, params=params)

    async def _post(self, outbound: Outbound, *, view: discord.ui.View | None = None) -> str:
        """Create the message (with `view`'s buttons); its id."""
        rest = await self._http()
        channel_id = _channel_id(outbound.conversation)
        reply_to = outbound.extras.get("reply_to")
        reference: Any = (
            {"message_id": reply_to, "channel_id": channel_id, "fail_if_not_exists": False}
            if reply_to
            else discord.utils.MISSING
        )
        with handle_message_parameters(
            content=outbound.text,
            nonce=_nonce(outbound),
            allowed_mentions=ALLOWED_MENTIONS,
            message_reference=reference,
            view=view or discord.utils.MISSING,
        ) as params:
            created = await rest.send_message(channel_id, params=params)
        return str(created["id"])

    async def typing(self, conversation: str) -> None:
        # Lasts 10 s or until the bot's message: https://discord.com/developers/docs/resources/channel#trigger-typing-indicator
        await (await self._http()).send_typing(_channel_id(conversation))

    async def close(self) -> None:
        if self._rest is not None:
            await self._rest.close()
            self._rest = None

    async def _http(self) -> HTTPClient:
        async with self._rest_login:
            if self._rest is None:
                rest = HTTPClient(asyncio.get_running_loop())
                try:
                    await rest.static_login(self._token)
                except BaseException:
                    await rest.close()
                    raise
                self._rest = rest
        return self._rest

    # The gateway (connectors process).

    async def start(self) -> None:
        """Connect, and return once READY; a refused intent or token raises a precise error."""
        client = _GatewayClient(self)
        try:
            await client.login(self._token)
            # The gateway's address comes from the API (https://discord.com/developers/docs/events/gateway#get-gateway-bot);
            # discord.py otherwise uses its built-in `DEFAULT_GATEWAY`, which ignores `api_url`.
            _, url, _ = await client.http.get_bot_gateway()
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
            connection = asyncio.create_task(self._connect(client), name="discord-gateway")
            ready = asyncio.create_task(client.wait_until_ready())
            await asyncio.wait(
                (connection, ready), timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            ready.cancel()
            if connection.done():
                connection.result()  # raises what ended it
                raise RuntimeError("the Discord gateway closed before READY")
        except BaseException:
            await client.close()
            raise
        self._client, self._connection = client, connection
        connection.add_done_callback(_report_connection_end)
        self._last_event = time.monotonic()
        self._watchdog = asyncio.create_task(self._watch(client), name="discord-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._connection is not None:
            await asyncio.gather(self._connection, return_exceptions=True)
        self._client = self._connection = self._watchdog = None

    async def _connect(self, client: discord.Client) -> None:
        try:
            await client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            raise MessageContentIntentMissing() from None

    async def _watch(self, client: discord.Client) -> None:
        """Force a reconnect when the gateway has dispatched nothing for `watchdog_seconds`.

        A socket can stay open, heartbeats acknowledged, while events stop arriving. A close with
        a non-1000 code keeps the session resumable, so discord.py resumes and Discord replays
        what was missed (https://discord.com/developers/docs/events/gateway#resuming); on a merely
        quiet server this costs one reconnect."""
        limit = self.config.watchdog_seconds
        while True:
            await asyncio.sleep(limit / 4)
            silent = time.monotonic() - self._last_event
            if silent < limit or client.ws is None or client.is_closed():
                continue
            log.warning("discord.watchdog_reconnect", silent_seconds=round(silent, 1))
            self._last_event = time.monotonic()
            await client.ws.close(code=4000)

    async def _on_interaction(self, interaction: discord.Interaction) -> None:
        """A satisfaction button, for the conversation of whoever pressed it (in a guild
        channel, only the customer who was asked has that ask open)."""
        data: dict[str, object] = dict(interaction.data or {})
        rating = Rating.from_token(str(data.get("custom_id", "")))
        if interaction.type is not discord.InteractionType.component or rating is None:
            return
        channel_id = str(interaction.channel_id)
        direct = interaction.guild_id is None
        scope = (channel_id,) if direct else (channel_id, str(interaction.user.id))
        async with self._publishing:
            await self.context.publish(
                rating.event(
                    CHANNEL, conversation_key(CHANNEL, *scope), interaction.user.display_name
                )
            )
        try:  # best effort: the rating is on the bus already
            await interaction.response.edit_message(view=_rating_view(rating.ask, rating.score))
        except discord.HTTPException as error:
            log.warning("discord.interaction_answer_failed", status=error.status)

    def _saw_event(self) -> None:
        self._last_event = time.monotonic()

    async def _on_message(self, message: discord.Message, me: discord.ClientUser) -> None:
        inbound = _inbound(message, me)
        if inbound is None:
            return
        async with self._publishing:
            await self.context.publish(inbound)


class DiscordEdits:
    """A posted message, edited as the answer grows: the latest text at most once per
    `EDIT_INTERVAL`, and the complete one at the end."""

    def __init__(self, channel: DiscordChannel, channel_id: int, message_id: str, text: str):
        self._channel = channel
        self._channel_id = channel_id
        self._message_id = message_id
        self._text = text  # what the message should read
        self._shown = text  # what Discord shows
        self._last_edit = time.monotonic()
        self._pending: asyncio.Task[None] | None = None

    @property
    def handle(self) -> dict[str, str]:
        return {"channel_id": str(self._channel_id), "message_id": self._message_id}

    async def append(self, text: str) -> None:
        self._text += text
        if self._pending is None:
            self._pending = asyncio.create_task(self._edit_soon())

    async def finish(self, reply: Outbound) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)
        if reply.text != self._shown:
            await self._edit(reply.text)

    replace = finish  # the last edit makes it read as the reply, whatever it showed

    async def _edit_soon(self) -> None:
        try:
            while self._text != self._shown:
                await asyncio.sleep(self._last_edit + EDIT_INTERVAL - time.monotonic())
                await self._edit(self._text)
        except Exception:  # the final edit at `finish` tries again
            log.warning("discord.edit_failed", exc_info=True)
        finally:
            self._pending = None

    async def _edit(self, text: str) -> None:
        self._last_edit = time.monotonic()
        await self._channel._edit(self._channel_id, self._message_id, text)
        self._shown = text


class _GatewayClient(discord.Client):
    """discord.py's client with the gateway events the adapter needs."""

    def __init__(self, adapter: DiscordChannel) -> None:
        intents = discord.Intents.default()
        # Privileged: without it guild messages arrive with empty content. https://discord.com/developers/docs/events/gateway#message-content-intent
        intents.message_content = True
        super().__init__(intents=intents)
        self._adapter = adapter

    async def on_ready(self) -> None:
        log.info("discord.ready", user=str(self.user), guilds=len(self.guilds))

    async def on_connect(self) -> None:
        log.info("discord.connected")

    async def on_resumed(self) -> None:
        log.info("discord.resumed")

    async def on_disconnect(self) -> None:
        log.warning("discord.disconnected")

    async def on_socket_event_type(self, _event_type: str) -> None:
        self._adapter._saw_event()

    async def on_message(self, message: discord.Message) -> None:
        if self.user is not None:
            await self._adapter._on_message(message, self.user)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self._adapter._on_interaction(interaction)


def _rating_view(ask: str, chosen: int | None = None) -> discord.ui.View:
    """The five buttons of an ask; once `chosen`, all disabled and that one green."""
    view = discord.ui.View(timeout=None)
    for score in SCORES:
        pressed = score == chosen
        view.add_item(
            discord.ui.Button(
                label=str(score),
                custom_id=Rating(ask=ask, score=score).token,
                style=discord.ButtonStyle.success if pressed else discord.ButtonStyle.secondary,
                disabled=chosen is not None,
            )
        )
    return view


def _inbound(message: discord.Message, me: discord.ClientUser) -> Inbound | None:
    if message.author.bot or message.type not in _ANSWERED_TYPES:
        return None
    # A guild the cache has not seen yet gives `message.guild` None; the channel type is certain.
    direct = isinstance(message.channel, discord.DMChannel)
    if not direct and not any(user.id == me.id for user in message.mentions):
        return None
    text = message.content.replace(f"<@{me.id}>", "").replace(f"<@!{me.id}>", "").strip()
    attachments = _attachments(message)
    if not text and not attachments:
        return None
    channel_id = str(message.channel.id)
    scope = (channel_id,) if direct else (channel_id, str(message.author.id))
    return Inbound(
        channel=CHANNEL,
        conversation=conversation_key(CHANNEL, *scope),
        sender=message.author.display_name,
        text=text,
        attachments=attachments,
        provider_message_id=str(message.id),
        thread=channel_id if isinstance(message.channel, discord.Thread) else None,
        extras={} if direct else {"reply_to": str(message.id)},
        identity=Identity(kind=IdentityKind.USER, value=f"discord:{message.author.id}"),
    )


def _attachments(message: discord.Message) -> tuple[Attachment, ...]:
    found = [
        Attachment(
            kind=_kind(item.content_type),
            name=item.filename,
            url=item.url,
            mime_type=item.content_type,
            size=item.size,
        )
        for item in message.attachments
    ]
    found += [Attachment(kind="sticker", name=f"sticker {item.name}") for item in message.stickers]
    return tuple(found)


def _kind(content_type: str | None) -> str:
    major = (content_type or "").split("/")[0]
    return {"image": "image", "audio": "audio", "video": "video"}.get(major, "document")


def _channel_id(conversation: str) -> int:
    """The channel (or thread) id is the key's first scope part: `discord:<channel>[:<user>]`."""
    return int(ConversationKey.parse(conversation).scope[0])


def _nonce(outbound: Outbound) -> str | None:
    """The same reply part sent twice (a retry, a re-run after a crash) gets one message:
    Discord drops a repeated nonce when `enforce_nonce` is set (discord.py sets it).
    https://discord.com/developers/docs/resources/message#create-message"""
    if outbound.in_reply_to is None:
        return None
    seed = f"{outbound.conversation}|{outbound.in_reply_to}|{outbound.text}"
    return hashlib.sha256(seed.encode()).hexdigest()[:25]  # nonces are at most 25 characters


def _report_connection_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error("discord.gateway_stopped", error=f"{type(error).__name__}: {error}")
