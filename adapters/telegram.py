"""Telegram (aiogram 3): a webhook on the web process, or long polling in the connectors process.

`channels.telegram.mode` picks one, and only one, because Telegram lets a token be read one
way at a time: while a webhook is set, getUpdates answers 409 Conflict, and two pollers
terminate each other (https://core.telegram.org/bots/api#getupdates). So webhook mode never
polls, and polling mode deletes the webhook before its first getUpdates.

The webhook answers as soon as the update is on the bus, well inside the 60 s after which
Telegram redelivers; a redelivery (or an update polled twice) carries the same `update_id`,
which is the message's provider id, so the pipeline's dedupe drops it. Private chats are always
answered; in groups, only messages that mention the bot or reply to it, each sender in their
own conversation.

In a private chat a bot answer is streamed as a draft while it is written (`sendMessageDraft`,
each call the text so far under one `draft_id`, animated by the app), then persisted by the
final `sendMessage` (https://core.telegram.org/bots/api#sendmessagedraft); groups have no
drafts, so they get the whole answer once.

The satisfaction ask is a message with an inline keyboard of five buttons, each with the
callback data `rate:<ask id>:<score>`; a press arrives as a `callback_query`, is published as a
RATING event of the presser's conversation, then answered (answerCallbackQuery) and the
keyboard removed, so it is pressed once: https://core.telegram.org/bots/api#callbackquery
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
from typing import Literal

import structlog
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ChatAction, ChatType, MessageEntityType, ParseMode
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
)
from aiogram.utils.backoff import Backoff, BackoffConfig
from aiohttp import web
from pydantic import Field, SecretStr, ValidationError, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from adapters.base import BaseChannel, ChannelSection, CheckFailed, CredentialCheck, parse_json
from adapters.markup import to_telegram_html
from gateway.channel import Capabilities, ChannelContext, ReplyStream
from gateway.config import secret
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

log = structlog.get_logger(__name__)

CHANNEL = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Messages and button presses (the satisfaction ask); the rest (edits, reactions, members)
# are not asked for.
ALLOWED_UPDATES = ["message", "callback_query"]
POLL_TIMEOUT = 30  # seconds one getUpdates call waits for an update
POLL_BACKOFF = BackoffConfig(min_delay=1.0, max_delay=30.0, factor=1.5, jitter=0.1)
SEND_ATTEMPTS = 4
# Flood control can ask for minutes; holding a worker that long is worse than a reported failure.
MAX_RETRY_AFTER = 60


# Telegram's rule for setWebhook's secret_token: https://core.telegram.org/bots/api#setwebhook
_TELEGRAM_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class TelegramConfig(ChannelSection):
    bot_token: SecretStr | None = Field(default_factory=lambda: secret("TELEGRAM_BOT_TOKEN"))
    # webhook: Telegram POSTs updates to /telegram/webhook on the web process.
    # polling: the connectors process long-polls getUpdates (no public URL needed).
    mode: Literal["webhook", "polling"] = "webhook"
    webhook_secret: SecretStr | None = Field(
        default_factory=lambda: secret("TELEGRAM_WEBHOOK_SECRET")
    )
    api_url: str = "https://api.telegram.org"
    bot_username: str | None = Field(default=None, description="default: asked once with getMe")

    @model_validator(mode="after")
    def _usable(self) -> TelegramConfig:
        if not self.enabled:
            return self
        if self.bot_token is None:
            raise ValueError("bot_token is required when enabled (set TELEGRAM_BOT_TOKEN)")
        bot_id, _, rest = self.bot_token.get_secret_value().partition(":")
        if not bot_id.isdigit() or not rest or any(char.isspace() for char in rest):
            raise ValueError(
                "bot_token is not a Telegram bot token (<bot id>:<secret> from @BotFather)"
            )
        if self.mode == "webhook":
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if not _TELEGRAM_SECRET.match(secret):
                raise ValueError(
                    "webhook_secret is required in webhook mode: 1-256 characters of A-Z, a-z, "
                    "0-9, _ and - (set TELEGRAM_WEBHOOK_SECRET)"
                )
        return self


class TelegramChannel(BaseChannel[TelegramConfig]):
    name = CHANNEL
    # 4096 characters after entity parsing: https://core.telegram.org/bots/api#sendmessage
    capabilities = Capabilities(text_limit=4096, typing=True, streaming=True)

    @classmethod
    def credential_checks(cls, config: TelegramConfig) -> list[CredentialCheck]:
        async def get_me() -> str:  # https://core.telegram.org/bots/api#getme
            assert config.bot_token is not None  # the config refuses an enabled channel without
            api = TelegramAPIServer.from_base(config.api_url)
            bot = Bot(config.bot_token.get_secret_value(), session=AiohttpSession(api=api))
            try:
                me = await bot.get_me()
            except TelegramUnauthorizedError:
                raise CheckFailed("bot token rejected (401 Unauthorized)") from None
            finally:
                await bot.session.close()
            return f"bot @{me.username}"

        return [CredentialCheck(config.api_url, get_me)]

    def __init__(self, config: TelegramConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        token = self.config.bot_token
        if token is None:  # the config refuses an enabled channel without one
            raise ValueError("channels.telegram.bot_token is not set (TELEGRAM_BOT_TOKEN)")
        api = TelegramAPIServer.from_base(self.config.api_url)
        self._bot = Bot(token.get_secret_value(), session=AiohttpSession(api=api))
        username = self.config.bot_username
        self._username = username.lstrip("@").lower() if username else None
        self._polling: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        if self.config.mode != "webhook":
            return []
        return [web.post(WEBHOOK_PATH, self._webhook)]

    async def start(self) -> None:
        if self.config.mode != "polling":
            return  # webhook mode: Telegram pushes to the web process; polling would 409
        await self._bot.delete_webhook(drop_pending_updates=False)
        self._polling = asyncio.create_task(self._poll(), name="telegram-polling")
        log.info("telegram.polling_started")

    async def stop(self) -> None:
        if self._polling is None:
            return
        self._polling.cancel()
        await asyncio.gather(self._polling, return_exceptions=True)
        self._polling = None
        log.info("telegram.polling_stopped")

    async def close(self) -> None:
        await self._bot.session.close()

    async def send(self, outbound: Outbound) -> None:
        chat_id = _chat_id(outbound.conversation)
        reply_to = outbound.extras.get("reply_to")
        addressing = {
            "chat_id": chat_id,
            "message_thread_id": int(outbound.thread) if outbound.thread else None,
            # In a group the answer quotes the customer's message, so they see it is theirs.
            "reply_parameters": ReplyParameters(
                message_id=reply_to, allow_sending_without_reply=True
            )
            if reply_to
            else None,
        }
        try:
            await self._send_message(
                text=to_telegram_html(outbound.text), parse_mode=ParseMode.HTML, **addressing
            )
        except TelegramBadRequest as error:
            # Rejected markup fails the same way on every retry, so resend it as plain text:
            # https://core.telegram.org/bots/api#formatting-options
            if "can't parse entities" not in error.message.lower():
                raise
            log.warning("telegram.formatting_rejected", detail=error.message)
            await self._send_message(text=outbound.text, parse_mode=None, **addressing)

    async def ask_rating(self, ask: RatingAsk) -> None:
        keyboard = InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(
                        text=str(score), callback_data=Rating(ask=ask.id, score=score).token
                    )
                    for score in SCORES
                ]
            ]
        )
        thread = ask.reply.thread
        await self._send_message(
            chat_id=_chat_id(ask.reply.conversation),
            message_thread_id=int(thread) if thread else None,
            text=to_telegram_html(ask.reply.text),
            parse_mode=ParseMode.HTML,
            reply_markup=keyboard,
        )

    async def stream(self, outbound: Outbound) -> ReplyStream | None:
        if len(ConversationKey.parse(outbound.conversation).scope) != 1:
            return None  # a group (`telegram:<chat>:<user>`): drafts are for private chats
        draft = TelegramDraft(self, outbound)
        await draft.append(outbound.text)
        return draft

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream:
        # The draft a dead worker left is a preview that expires; the message is sent once.
        return TelegramDraft(self, outbound, int(handle["draft_id"]))

    async def typing(self, conversation: str) -> None:
        # Lasts 5 s or until the bot's message arrives: https://core.telegram.org/bots/api#sendchataction
        await self._bot.send_chat_action(chat_id=_chat_id(conversation), action=ChatAction.TYPING)

    async def _send_message(self, **params: object) -> None:
        """sendMessage, retried after flood control's `retry_after` and on server errors."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=_retry_wait,
            stop=stop_after_attempt(SEND_ATTEMPTS),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                await self._bot.send_message(**params)  # type: ignore[arg-type]

    async def _webhook(self, request: web.Request) -> web.Response:
        secret = self.config.webhook_secret
        expected = secret.get_secret_value().encode() if secret else b""
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not expected or not hmac.compare_digest(given, expected):
            log.warning("telegram.webhook_unauthorized", header_present=bool(given))
            raise web.HTTPUnauthorized(reason="wrong or missing secret token")
        try:
            body = parse_json(await request.read())
        except ValueError:
            log.warning("telegram.webhook_malformed", problems="not JSON")
            raise web.HTTPBadRequest(reason="body is not valid JSON") from None
        try:
            update = Update.model_validate(body, context={"bot": self._bot})
        except ValidationError as error:
            log.warning("telegram.webhook_malformed", problems=error.error_count())
            raise web.HTTPBadRequest(reason="body is not a Telegram Update") from None
        await self._accept(update)
        return web.json_response({})

    async def _poll(self) -> None:
        """Long-poll getUpdates. An update is confirmed (the next offset) only once it is on the
        bus, so a bus outage loses nothing; aiogram's own polling loop confirms it even when its
        handler failed, hence this loop."""
        backoff = Backoff(POLL_BACKOFF)
        offset: int | None = None
        while True:
            try:
                updates = await self._bot.get_updates(
                    offset=offset, timeout=POLL_TIMEOUT, allowed_updates=ALLOWED_UPDATES
                )
                for update in updates:
                    await self._accept(update)
                    offset = update.update_id + 1
            except TelegramConflictError as error:
                # https://core.telegram.org/bots/api#getupdates: a webhook or a second poller.
                log.error(
                    "telegram.polling_conflict",
                    detail=error.message,
                    hint="another process polls this bot token, or a webhook was set again",
                )
                await backoff.asleep()
            except Exception as error:
                log.warning("telegram.polling_failed", error=f"{type(error).__name__}: {error}")
                await backoff.asleep()
            else:
                backoff.reset()

    async def _accept(self, update: Update) -> None:
        if update.callback_query is not None:
            await self._on_rating(update.callback_query, update.update_id)
            return
        message = await self._inbound(update)
        if message is None:
            log.debug("telegram.update_ignored", update_id=update.update_id)
            return
        await self.context.publish(message)

    async def _inbound(self, update: Update) -> Inbound | None:
        message = update.message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return None
        private = message.chat.type == ChatType.PRIVATE
        if not private and not await self._addressed_to_bot(message):
            return None
        text = message.text or message.caption or ""
        if not private and self._username:
            text = _strip_mention(text, self._username)
        attachments = _attachments(message)
        if not text.strip() and not attachments:
            return None  # service messages: members joining, pins, topic changes
        user = message.from_user
        chat_id = str(message.chat.id)
        scope = (chat_id,) if private else (chat_id, str(user.id))
        return Inbound(
            channel=CHANNEL,
            conversation=conversation_key(CHANNEL, *scope),
            sender=user.full_name,
            text=text.strip(),
            attachments=attachments,
            provider_message_id=str(update.update_id),
            thread=str(message.message_thread_id) if message.is_topic_message else None,
            extras={} if private else {"reply_to": message.message_id},
            identity=Identity(kind=IdentityKind.USER, value=f"telegram:{user.id}"),
        )

    async def _on_rating(self, query: CallbackQuery, update_id: int) -> None:
        """A satisfaction button, for the conversation of whoever pressed it (in a group, only
        the customer who was asked has that ask open: anyone else's press is dropped)."""
        rating = Rating.from_token(query.data or "")
        message = query.message
        if rating is None or not isinstance(message, Message):
            log.info("telegram.callback_ignored", update_id=update_id)
            await self._bot.answer_callback_query(query.id)
            return
        chat_id = str(message.chat.id)
        private = message.chat.type == ChatType.PRIVATE
        scope = (chat_id,) if private else (chat_id, str(query.from_user.id))
        await self.context.publish(
            rating.event(CHANNEL, conversation_key(CHANNEL, *scope), query.from_user.full_name)
        )
        try:  # best effort: the rating is on the bus already
            await self._bot.answer_callback_query(query.id)
            if private:
                await self._bot.edit_message_reply_markup(
                    chat_id=message.chat.id, message_id=message.message_id, reply_markup=None
                )
        except Exception as error:
            log.warning("telegram.callback_answer_failed", error=type(error).__name__)

    async def _addressed_to_bot(self, message: Message) -> bool:
        replied = message.reply_to_message
        if replied and replied.from_user and replied.from_user.id == self._bot.id:
            return True
        if self._username is None:
            self._username = ((await self._bot.me()).username or "").lower()
        text = message.text or message.caption or ""
        mention = f"@{self._username}"
        return any(
            (
                entity.type == MessageEntityType.MENTION
                and entity.extract_from(text).lower() == mention
            )
            or (
                entity.type == MessageEntityType.TEXT_MENTION
                and entity.user is not None
                and entity.user.id == self._bot.id
            )
            for entity in message.entities or message.caption_entities or ()
        )


class TelegramDraft:
    """A private chat's draft, redrawn with the text so far, until the final message."""

    def __init__(
        self, channel: TelegramChannel, outbound: Outbound, draft_id: int | None = None
    ) -> None:
        self._channel = channel
        self._chat_id = _chat_id(outbound.conversation)
        self._thread = int(outbound.thread) if outbound.thread else None
        self._id = draft_id or secrets.randbelow(2**31 - 1) + 1  # "must be non-zero"
        self._text = ""

    @property
    def handle(self) -> dict[str, str]:
        return {"draft_id": str(self._id)}

    async def append(self, text: str) -> None:
        self._text += text
        await self._channel._bot.send_message_draft(
            chat_id=self._chat_id,
            draft_id=self._id,
            message_thread_id=self._thread,
            text=to_telegram_html(self._text),
            parse_mode=ParseMode.HTML,
        )

    async def finish(self, reply: Outbound) -> None:
        # A draft is ephemeral (a 30 s preview): the message is what persists the answer.
        await self._channel.send(reply)

    replace = finish  # the message replaces the draft, whatever it showed


def _chat_id(conversation: str) -> int:
    """The chat id is the key's first scope part: `telegram:<chat>` or `telegram:<chat>:<user>`."""
    return int(ConversationKey.parse(conversation).scope[0])


def _strip_mention(text: str, username: str) -> str:
    mention = f"@{username}"
    index = text.lower().find(mention)
    return text if index < 0 else text[:index] + text[index + len(mention) :]


def _attachments(message: Message) -> tuple[Attachment, ...]:
    """What the customer sent besides text, as notes; files are never downloaded."""
    found: list[Attachment] = []
    if message.photo:
        largest = message.photo[-1]
        found.append(Attachment(kind="image", name="photo", size=largest.file_size))
    if message.document:
        document = message.document
        found.append(
            Attachment(
                kind="document",
                name=document.file_name,
                mime_type=document.mime_type,
                size=document.file_size,
            )
        )
    if message.voice:
        voice = message.voice
        found.append(
            Attachment(
                kind="audio",
                name=f"voice message, {voice.duration} s",
                mime_type=voice.mime_type,
                size=voice.file_size,
            )
        )
    if message.audio:
        audio = message.audio
        found.append(
            Attachment(kind="audio", name=audio.title or audio.file_name, mime_type=audio.mime_type)
        )
    if message.video or message.video_note:
        found.append(Attachment(kind="video", name="video"))
    if message.sticker:
        found.append(
            Attachment(kind="sticker", name=f"sticker {message.sticker.emoji or ''}".strip())
        )
    if message.location:
        found.append(Attachment(kind="location", name="location"))
    return tuple(found)


def _retryable(error: BaseException) -> bool:
    if isinstance(error, TelegramRetryAfter):
        return error.retry_after <= MAX_RETRY_AFTER
    return isinstance(error, TelegramServerError)


def _retry_wait(state: RetryCallState) -> float:
    """Flood control says how long to wait (https://core.telegram.org/bots/api#responseparameters);
    a server error backs off 1, 2, 4 s."""
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, TelegramRetryAfter):
        return float(error.retry_after)
    return float(2 ** (state.attempt_number - 1))


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "telegram.send_retry",
        attempt=state.attempt_number,
        wait=round(state.upcoming_sleep, 2),
        error=type(error).__name__,
    )
