"""Slack: customers write by DM or @mention, and agents answer escalations in a Slack channel.

Inbound, the signing secret is verified over the raw body before anything parses it (401
otherwise); then slack-bolt's `AsyncApp` does the protocol work: it answers `url_verification`
and `ssl_check`, and drops the bot's own events. Events
and button presses arrive over HTTP on `POST /slack/events` (web process), or over Socket Mode
(`slack.mode: socket`, connectors process). Each is published on the bus *before* Slack gets
its answer (`process_before_response`), so an acknowledged event is never lost; a redelivery
(`X-Slack-Retry-Num`) carries the same provider message id, `slack:{channel}:{ts}`, and the
pipeline's dedupe answers it once.

Messages are routed by where they are written:

- a thread the hand-off linked to a conversation (`store.thread_conversation`): an agent's
  reply, or an internal note when it starts with `handoff.note_prefix`, published under the
  customer's conversation key (whatever the customer's channel);
- a DM, an @mention, or a follow-up in the thread of a channel conversation: a customer's
  message; the bot answers in a thread;
- anything else (an escalation channel outside its threads, other bots, edits): ignored.

A bot answer is streamed into its thread as it is written (`chat.startStream`, then
`chat.appendStream`, ended by `chat.stopStream`: slack_sdk's `AsyncChatStream`,
https://docs.slack.dev/reference/methods/chat.startStream); a streamed message that must read
otherwise at the end (a policy escalation) is rewritten with `chat.update`.

The satisfaction ask is a message with five buttons (`satisfaction_1` to `satisfaction_5`, the
value naming the conversation and the ask); a press by the customer is published as a RATING
event, before Slack gets its ack, like every other event.

The agents' console on the same Web API is `adapters/slack_console.py`.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import Awaitable
from typing import Any, Literal

import structlog
from aiohttp import ClientConnectorError, ClientError, web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.base import BaseChannel, ChannelSection, CheckFailed, CredentialCheck
from gateway.channel import Capabilities, ChannelContext, ReplyStream
from gateway.config import secret
from gateway.message import (
    SCORES,
    Attachment,
    ConversationKey,
    Identity,
    IdentityKind,
    Inbound,
    InboundKind,
    Outbound,
    Rating,
    RatingAsk,
    conversation_key,
)

log = structlog.get_logger(__name__)

CHANNEL = "slack"
EVENTS_PATH = "/slack/events"
NAME_LOOKUP_TIMEOUT = 3.0  # seconds an agent's reply waits for their display name

RATING_ACTION = "satisfaction_"  # + the score
BUTTONS = {
    "handoff_claim": InboundKind.CLAIM,
    "handoff_resolve": InboundKind.RESOLVE,
    "handoff_hand_back": InboundKind.HAND_BACK,
}
# Message subtypes written by a person; every other subtype (bot_message, message_changed,
# message_deleted, channel_join, ...) is not a new message: https://docs.slack.dev/reference/events/message
_PERSON_SUBTYPES = {None, "file_share", "thread_broadcast"}
# <https://x|label>, <@U123>, <#C123|general>, <!subteam^S1|@team>: https://docs.slack.dev/messaging/formatting-message-text
_MRKDWN_REFERENCE = re.compile(r"<([^<>|]+)(?:\|([^<>]*))?>")


class _Envelope(BaseModel):
    """What bolt reads of a signed body before any listener runs, in the shape Slack sends:
    a body with these in another shape is not Slack's, and would fail inside bolt (a 500)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str = ""
    event: _Event = None  # type: ignore[assignment]  # absent is fine; null is not Slack's
    actions: list[_Action] = Field(default_factory=lambda: [_Action()], min_length=1)
    user: dict[str, Any] | str = Field(default_factory=dict)
    team: dict[str, Any] | str | None = None
    enterprise: dict[str, Any] | str | None = None
    channel: dict[str, Any] | str = Field(default_factory=dict)
    container: dict[str, Any] = Field(default_factory=dict)
    authorizations: list[dict[str, Any]] = Field(default_factory=list)


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str = ""
    files: list[_File] = Field(default_factory=list)
    message: dict[str, Any] = Field(default_factory=dict)
    previous_message: dict[str, Any] = Field(default_factory=dict)


class _File(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str | None = None
    mimetype: str | None = None
    size: int | None = None


class _Action(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    action_id: str = ""
    value: str = ""
    action_ts: str = ""


class SlackConfig(ChannelSection):
    """Slack: customers by DM or @mention, and (with a bot token) the agents' console."""

    # events: Slack POSTs events and button presses to /slack/events on the web process.
    # socket: the connectors process holds a Socket Mode websocket (no public URL needed).
    mode: Literal["events", "socket"] = "events"
    bot_token: SecretStr | None = Field(default_factory=lambda: secret("SLACK_BOT_TOKEN"))
    signing_secret: SecretStr | None = Field(default_factory=lambda: secret("SLACK_SIGNING_SECRET"))
    app_token: SecretStr | None = Field(default_factory=lambda: secret("SLACK_APP_TOKEN"))
    api_url: str = Field(default="https://slack.com/api/", description="the Web API base URL")

    @model_validator(mode="after")
    def _usable(self) -> SlackConfig:
        if not self.enabled:
            return self
        if self.bot_token is None:
            raise ValueError("bot_token is required when enabled (set SLACK_BOT_TOKEN)")
        if self.mode == "events" and self.signing_secret is None:
            raise ValueError("signing_secret is required in events mode (set SLACK_SIGNING_SECRET)")
        if self.mode == "socket" and self.app_token is None:
            raise ValueError("app_token is required in socket mode (set SLACK_APP_TOKEN)")
        return self


def web_client(slack: SlackConfig) -> AsyncWebClient:
    """The Web API client: honours 429 `Retry-After`, and retries only a connection that never
    opened (a reset after the request was sent could mean a message already posted).

    No session is passed: the SDK opens and closes one per call, so nothing is left to close.
    """
    token = slack.bot_token.get_secret_value() if slack.bot_token else None
    return AsyncWebClient(
        token=token,
        base_url=slack.api_url,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            AsyncConnectionErrorRetryHandler(error_types=[ClientConnectorError]),
        ],
    )


class SlackChannel(BaseChannel[SlackConfig]):
    name = CHANNEL
    # Slack truncates at 40,000 characters, but asks clients to keep messages to 4,000
    # (https://api.slack.com/rtm#limits); longer answers are split at paragraphs instead.
    capabilities = Capabilities(text_limit=4000, streaming=True)

    @classmethod
    def credential_checks(cls, config: SlackConfig) -> list[CredentialCheck]:
        """auth.test with the bot token (https://docs.slack.dev/reference/methods/auth.test);
        in socket mode also apps.connections.open, the method the app token is for."""
        assert config.bot_token is not None  # the config refuses an enabled Slack without one
        # No retries: the SDK's default retries a refused connection until the check's time is up.
        client = AsyncWebClient(
            token=config.bot_token.get_secret_value(), base_url=config.api_url, retry_handlers=[]
        )

        async def answer(method: str, call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
            try:
                return await call
            except SlackApiError as error:
                raise CheckFailed(f"{method} says {error.response['error']}") from None

        async def auth_test() -> str:
            found = await answer("auth.test", client.auth_test())
            return f"team {found['team']} ({found['team_id']}), bot @{found['user']}"

        async def connections_open() -> str:
            assert config.app_token is not None  # required in socket mode
            token = config.app_token.get_secret_value()
            await answer("apps.connections.open", client.apps_connections_open(app_token=token))
            return "Socket Mode allowed"

        checks = [CredentialCheck(config.api_url, auth_test, "bot token")]
        if config.mode == "socket":
            checks.append(CredentialCheck(config.api_url, connections_open, "app token"))
        return checks

    def __init__(self, config: SlackConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        self.client = web_client(self.config)
        secret = self.config.signing_secret
        self._verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
        self._app = AsyncApp(
            client=self.client,
            signing_secret=secret.get_secret_value() if secret else None,
            # `_events` verifies HTTP requests before bolt sees them; Socket Mode connections
            # are authenticated by the app token, not signed.
            request_verification_enabled=False,
            # Publish on the bus, then answer Slack: an acknowledged event is never lost.
            process_before_response=True,
            name="gateway",
        )
        self._app.event("message")(self._on_message)
        self._app.event("app_mention")(self._on_message)
        self._app.action(re.compile("^handoff_"))(self._on_button)
        self._app.action(re.compile(f"^{RATING_ACTION}"))(self._on_rating)
        self._socket: AsyncSocketModeHandler | None = None
        self._names: dict[str, str] = {}  # user id -> display name; agents are few

    def routes(self) -> list[web.RouteDef]:
        if self.config.mode != "events":
            return []
        return [web.post(EVENTS_PATH, self._events)]

    async def start(self) -> None:
        if self.config.mode != "socket" or self.config.app_token is None:
            return
        self._socket = AsyncSocketModeHandler(
            self._app,
            self.config.app_token.get_secret_value(),
            web_client=AsyncWebClient(base_url=self.config.api_url),
        )
        await self._socket.connect_async()  # type: ignore[no-untyped-call]
        log.info("slack.socket_mode_connected")

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None

    async def send(self, outbound: Outbound) -> None:
        channel, thread = _address(outbound)
        await self.client.chat_postMessage(
            channel=channel,
            thread_ts=thread,
            # The brain and other channels write standard Markdown, which a markdown block
            # renders (https://docs.slack.dev/reference/block-kit/blocks/markdown-block);
            # `text` is the notification fallback.
            blocks=[{"type": "markdown", "text": outbound.text}],
            text=outbound.text,
            unfurl_links=False,
        )

    async def ask_rating(self, ask: RatingAsk) -> None:
        """The question with a button per score (https://docs.slack.dev/reference/block-kit/blocks/actions-block)."""
        channel, thread = _address(ask.reply)
        value = json.dumps({"conversation": ask.reply.conversation, "ask": ask.id})
        buttons = [
            {
                "type": "button",
                "action_id": f"{RATING_ACTION}{score}",
                "text": {"type": "plain_text", "text": str(score)},
                "value": value,
            }
            for score in SCORES
        ]
        await self.client.chat_postMessage(
            channel=channel,
            thread_ts=thread,
            blocks=[
                {"type": "markdown", "text": ask.reply.text},
                {"type": "actions", "block_id": "satisfaction", "elements": buttons},
            ],
            text=ask.reply.text,
        )

    async def stream(self, outbound: Outbound) -> ReplyStream | None:
        channel, thread = _address(outbound)
        if thread is None:
            return None  # a streamed message is always a thread reply
        # Outside a DM the stream names its reader (the customer, from the inbound `extras`).
        streamer = await self.client.chat_stream(
            channel=channel,
            thread_ts=thread,
            recipient_user_id=outbound.extras.get("recipient_user"),
            recipient_team_id=outbound.extras.get("recipient_team"),
            buffer_size=1,  # every sentence goes out as it is released; they come ~1 s apart
        )
        stream = SlackStream(self.client, channel, streamer)
        await stream.append(outbound.text)
        return stream

    async def resume(self, outbound: Outbound, handle: dict[str, str]) -> ReplyStream | None:
        return SlackStream(self.client, handle["channel"], ts=handle["ts"])

    # -- inbound -----------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.Response:
        """The signature is checked over the raw body before anything parses it (bolt would
        parse first: a hostile unsigned body could fail there); then bolt takes the request."""
        raw = await request.read()
        if not self._signed(raw, request):
            log.warning(
                "slack.rejected",
                reason="signature or timestamp invalid",
                has_signature="X-Slack-Signature" in request.headers,
            )
            return web.json_response({"error": "invalid request"}, status=401)
        try:
            bolt_request = AsyncBoltRequest(
                body=raw.decode("utf-8"),
                query=request.query_string,
                headers=dict(request.headers),
            )
            _Envelope.model_validate(bolt_request.body)
        # Bolt reads a signed body as Slack shapes it; anything else fails somewhere in there.
        except (ValueError, RecursionError, TypeError, AttributeError, LookupError):
            log.warning("slack.malformed_body", content_type=request.content_type)
            raise web.HTTPBadRequest(reason="body is not a Slack event or action") from None
        return await to_aiohttp_response(await self._app.async_dispatch(bolt_request))

    def _signed(self, body: bytes, request: web.Request) -> bool:
        """Slack's signature over `v0:{timestamp}:{body}`, within five minutes of now:
        https://docs.slack.dev/authentication/verifying-requests-from-slack"""
        if self._verifier is None:
            return False
        try:
            return self._verifier.is_valid(
                body,
                timestamp=request.headers.get("X-Slack-Request-Timestamp"),
                signature=request.headers.get("X-Slack-Signature"),
            )
        except ValueError:  # a timestamp that is not a number
            return False

    async def _on_message(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        if event.get("bot_id") or event.get("subtype") not in _PERSON_SUBTYPES:
            return  # other bots, and edits, deletions, joins: not a new message from a person
        channel, ts, user = event.get("channel"), event.get("ts"), event.get("user")
        workspace = context.enterprise_id or context.team_id
        strings = isinstance(channel, str) and isinstance(ts, str) and isinstance(user, str)
        if not strings or not channel or not ts or not user or not workspace:
            log.warning("slack.incomplete_event", type=event.get("type"))
            return
        thread_ts = event.get("thread_ts")
        if thread_ts:
            linked = await self.context.thread_conversation(f"{channel}:{thread_ts}")
            if linked is not None:
                await self._publish_agent_message(event, linked)
                return
        if event.get("channel_type") == "im":
            key = conversation_key(CHANNEL, workspace, channel)
        else:
            # In channels (Slack Connect ones too) each thread is a conversation, keyed by the
            # workspace the app is installed in, never the sender's (shared channels mix them).
            key = conversation_key(CHANNEL, workspace, channel, thread_ts or ts)
            mentioned = event.get("type") == "app_mention"
            if not mentioned and (not thread_ts or await self.context.conversation(key) is None):
                return  # channel chatter that is not addressed to the bot
        await self.context.publish(
            Inbound(
                channel=CHANNEL,
                conversation=key,
                sender=user,
                text=_plain(event.get("text", ""), bot_user_id=context.bot_user_id),
                attachments=tuple(_attachment(file) for file in event.get("files", ())),
                provider_message_id=f"slack:{channel}:{ts}",
                thread=thread_ts or ts,  # replies go to the message's thread, or start one
                # Who a streamed answer is for: https://docs.slack.dev/reference/methods/chat.startStream
                extras={"recipient_user": user, "recipient_team": context.team_id or workspace},
                identity=Identity(kind=IdentityKind.USER, value=f"slack:{workspace}:{user}"),
            )
        )

    async def _publish_agent_message(self, event: dict[str, Any], conversation: str) -> None:
        text = _plain(event.get("text", ""))
        prefix = self.context.limits.note_prefix
        is_note = text[: len(prefix)].casefold() == prefix.casefold()
        await self.context.publish(
            Inbound(
                kind=InboundKind.AGENT_NOTE if is_note else InboundKind.AGENT_REPLY,
                channel=_customer_channel(conversation),
                conversation=conversation,
                sender=event["user"],
                author=await self._display_name(event["user"]),
                text=text[len(prefix) :].strip() if is_note else text,
                attachments=tuple(_attachment(file) for file in event.get("files", ())),
                provider_message_id=f"slack:{event['channel']}:{event['ts']}",
            )
        )

    async def _on_button(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        action = body["actions"][0]
        kind = BUTTONS.get(action.get("action_id", ""))
        conversation = action.get("value", "")
        channel = body.get("container", {}).get("channel_id", "")
        parent = body.get("container", {}).get("message_ts", "")
        linked = await self.context.thread_conversation(f"{channel}:{parent}")
        if kind is None or not conversation or linked != conversation:
            # An old card (its conversation expired) or a button this gateway never drew.
            log.warning("slack.stale_button", action=action.get("action_id"), thread=parent)
            await ack()
            return
        who = body.get("user")
        user = who.get("id") if isinstance(who, dict) else None
        if not isinstance(user, str) or not user:
            log.warning("slack.incomplete_action", action=action.get("action_id"))
            await ack()
            return
        await self.context.publish(
            Inbound(
                kind=kind,
                channel=_customer_channel(conversation),
                conversation=conversation,
                sender=user,
                author=await self._display_name(user),
                provider_message_id=f"slack-action:{action['action_ts']}:{user}",
            )
        )
        await ack()

    async def _on_rating(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """A satisfaction button: counted when the customer of the conversation pressed it
        (in a channel thread, others see the buttons too)."""
        action = body["actions"][0]
        who = body.get("user")
        user = who.get("id") if isinstance(who, dict) else None
        try:
            value = json.loads(action.get("value", ""))
            key, ask = value["conversation"], value["ask"]
            rating = Rating(ask=ask, score=int(action["action_id"].removeprefix(RATING_ACTION)))
        except (ValueError, TypeError, KeyError):
            log.warning("slack.malformed_rating", action=action.get("action_id"))
            await ack()
            return
        conversation = await self.context.conversation(key) if isinstance(key, str) else None
        if conversation is None or conversation.customer != user:
            log.warning("slack.stale_rating", why="no conversation, or not its customer")
            await ack()
            return
        await self.context.publish(rating.event(CHANNEL, key, user))
        await ack()

    async def _display_name(self, user: str) -> str:
        """The agent's Slack name, or their user id when `users.info` fails or is slow: the
        reply or button press goes on either way (Slack does not retry a button press)."""
        if user not in self._names:
            try:
                async with asyncio.timeout(NAME_LOOKUP_TIMEOUT):
                    profile = (await self.client.users_info(user=user))["user"]
            except (SlackApiError, ClientError, TimeoutError) as error:
                log.warning("slack.users_info_failed", user=user, error=_failure(error))
                return user  # not cached: the next event asks again
            names = profile.get("profile", {})
            self._names[user] = (
                names.get("display_name") or names.get("real_name") or profile.get("name") or user
            )
        return self._names[user]


class SlackStream:
    """One streamed bot message in a thread: written through slack_sdk's `AsyncChatStream`, or,
    resumed after the worker writing it died, found again by its `ts`."""

    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        streamer: AsyncChatStream | None = None,
        *,
        ts: str = "",
    ) -> None:
        self._client = client
        self._channel = channel
        self._streamer = streamer
        self._ts = ts

    @property
    def handle(self) -> dict[str, str]:
        ts = self._streamer.ts if self._streamer is not None else self._ts
        return {"channel": self._channel, "ts": ts or ""}

    async def append(self, text: str) -> None:
        if self._streamer is not None:
            await self._streamer.append(markdown_text=text)
        else:
            await self._client.chat_appendStream(
                channel=self._channel, ts=self._ts, markdown_text=text
            )

    async def finish(self, reply: Outbound) -> None:
        await self._stop()

    async def replace(self, reply: Outbound) -> None:
        await self._stop()
        await self._client.chat_update(
            channel=self._channel,
            ts=self.handle["ts"],
            blocks=[{"type": "markdown", "text": reply.text}],
            text=reply.text,
        )

    async def _stop(self) -> None:
        if self._streamer is not None:
            await self._streamer.stop()
            return
        try:
            await self._client.chat_stopStream(channel=self._channel, ts=self._ts)
        except SlackApiError as error:  # Slack ended a stream left idle: it is stopped anyway
            log.info("slack.stream_already_stopped", detail=_failure(error))


def _failure(error: Exception) -> str:
    """What went wrong with a Web API call, for the log: Slack's error code when it gave one."""
    if isinstance(error, SlackApiError):
        data = error.response.data
        code = data.get("error") if isinstance(data, dict) else None
        return str(code or f"HTTP {error.response.status_code}")
    return type(error).__name__


def _address(outbound: Outbound) -> tuple[str, str | None]:
    """The Slack channel and thread of a reply, from the key `slack:{workspace}:{channel}[:ts]`."""
    _, channel, *thread = ConversationKey.parse(outbound.conversation).scope
    return channel, outbound.thread or (thread[0] if thread else None)


def _customer_channel(conversation: str) -> str:
    """The customer's channel: a conversation key starts with it (`conversation_key`)."""
    return ConversationKey.parse(conversation).channel


def _plain(text: str, *, bot_user_id: str | None = None) -> str:
    """Slack mrkdwn as the plain text other channels show: the bot's own mention dropped,
    links as `label (url)`, mentions by label, and `&amp; &lt; &gt;` decoded."""

    def reference(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        if target == f"@{bot_user_id}":
            return ""
        if target.startswith(("http://", "https://", "mailto:")):
            return f"{label} ({target})" if label and label != target else target
        return label or target

    return html.unescape(_MRKDWN_REFERENCE.sub(reference, text)).strip()


def _attachment(file: dict[str, Any]) -> Attachment:
    mime_type = file.get("mimetype") or None
    kind = (mime_type or "").split("/")[0]
    return Attachment(
        kind=kind if kind in {"image", "audio", "video"} else "document",
        name=file.get("name"),
        mime_type=mime_type,
        size=file.get("size"),
    )
