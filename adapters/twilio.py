"""SMS and WhatsApp through Twilio: two channels, one webhook shape, one REST send.

Inbound: Twilio POSTs each message to `/twilio/sms` or `/twilio/whatsapp`. The request is
checked against `X-Twilio-Signature` computed over the operator's `public_url` (what Twilio
called, not what a TLS-terminating proxy forwards), published on the bus, and answered at once
with empty TwiML; the reply goes out later from a worker through the REST API, with a status
callback to `/twilio/<channel>/status`. `MessageSid` is the provider message id, so the
pipeline's dedupe drops Twilio's redeliveries.

SMS replies are plain text cut into messages of whole segments (see `split_sms`). WhatsApp
replies are plain text too, and once the customer's 24-hour window has closed the reply goes
out as the operator's approved template, or is held and flagged when none is configured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import parse_qsl

import aiohttp
import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)
import structlog
from aiohttp import web
from multidict import MultiDict, MultiMapping
from prometheus_client import Counter
from pydantic import Field, SecretStr, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from adapters.base import BaseChannel, ChannelSection, CheckFailed, CredentialCheck
from adapters.markup import to_plain
from gateway.channel import Capabilities, ChannelContext
from gateway.config import Seconds, Section, env, secret
from gateway.message import (
    Attachment,
    ConversationKey,
    Identity,
    IdentityKind,
    Inbound,
    Outbound,
    conversation_key,
    utcnow,
)
from gateway.split import split_text
from gateway.topics import DeliveryReport

log = structlog.get_logger(__name__)

# https://www.twilio.com/docs/messaging/api/message-resource: Body holds 1,600 characters.
MAX_BODY = 1600
# https://www.twilio.com/docs/api/errors/63016: free-form WhatsApp messages only within 24 h of
# the customer's last message; afterwards only an approved template.
CUSTOMER_WINDOW = timedelta(hours=24)
# https://www.twilio.com/docs/api/errors/63021: template text plus variables within 1,024.
TEMPLATE_TEXT_MAX = 600
# Retry-After is honoured up to this; a conversation waits behind its reply meanwhile.
MAX_RETRY_AFTER = 30.0
FAILED_STATUSES = frozenset({"failed", "undelivered"})

STATUSES = Counter(
    "gateway_twilio_status_total", "Twilio delivery status callbacks", ["channel", "status"]
)


class TwilioChannelConfig(ChannelSection):
    """What `sms` and `whatsapp` share: each section stands alone, credentials from the env."""

    account_sid: str | None = Field(default_factory=lambda: env("TWILIO_ACCOUNT_SID"))
    auth_token: SecretStr | None = Field(default_factory=lambda: secret("TWILIO_AUTH_TOKEN"))
    api_url: str = "https://api.twilio.com"
    public_url: str | None = Field(
        default=None,
        description="scheme and host Twilio calls (https://support.example.com); webhook "
        "signatures are checked against it, not against the URL a proxy forwards",
    )
    from_number: str | None = Field(default=None, description="E.164 sender, e.g. +14155550100")
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    timeout: Seconds = Field(default=15.0, description="per REST request")
    send_attempts: int = Field(default=4, ge=1, le=10, description="tries when Twilio says 429")

    @model_validator(mode="after")
    def _usable(self) -> TwilioChannelConfig:
        if not self.enabled:
            return self
        if not self.account_sid or self.auth_token is None:
            raise ValueError(
                "account_sid and auth_token are required when enabled "
                "(set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)"
            )
        if not self.public_url or not self.public_url.startswith(("https://", "http://")):
            raise ValueError("public_url is required when enabled: the URL Twilio calls, https://…")
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("from_number or messaging_service_sid is required when enabled")
        return self


class SmsConfig(TwilioChannelConfig):
    max_segments: int = Field(
        default=3, ge=1, le=10, description="SMS segments per message; longer replies are split"
    )


class WhatsappTemplate(Section):
    """The approved template sent when the 24-hour customer-service window is closed."""

    content_sid: str = Field(pattern=r"^HX[0-9a-fA-F]{32}$")
    # Template variable -> value; a value may use {name} (the customer's WhatsApp profile name),
    # {agent} (who replied) and {text} (the reply).
    content_variables: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_fields(self) -> WhatsappTemplate:
        for variable, value in self.content_variables.items():
            try:
                value.format(name="", agent="", text="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"content_variables.{variable}: use only {{name}}, {{agent}} and {{text}} "
                    f"({type(exc).__name__}: {exc})"
                ) from None
        return self


class WhatsappConfig(TwilioChannelConfig):
    template: WhatsappTemplate | None = None


TwilioConfigT = TypeVar("TwilioConfigT", bound=TwilioChannelConfig)


class TwilioChannel(BaseChannel[TwilioConfigT], Generic[TwilioConfigT]):
    """What SMS and WhatsApp share: signed webhooks, the REST send, status callbacks."""

    address_prefix: ClassVar[str]  # how Twilio writes this channel's addresses: "whatsapp:+1…"
    capabilities = Capabilities(text_limit=MAX_BODY)  # media in: noted; media out: not sent

    @classmethod
    def credential_checks(cls, config: TwilioConfigT) -> list[CredentialCheck]:
        async def fetch_account() -> str:  # https://www.twilio.com/docs/iam/api/account
            assert config.account_sid is not None and config.auth_token is not None  # enabled
            # One attempt; this client, not the SDK's, for its non-deprecated Basic auth header.
            http = _SafeRetryHttpClient(timeout=config.timeout, attempts=1)
            token = config.auth_token.get_secret_value()
            client = Client(config.account_sid, token, http_client=http)
            client.api.base_url = config.api_url  # as in `_rest`
            try:
                account = await client.api.accounts(config.account_sid).fetch_async()
            except TwilioRestException as error:
                if error.status == 401:
                    rejected = "account SID or auth token rejected (401 Unauthorized)"
                    raise CheckFailed(rejected) from None
                raise CheckFailed(f"Twilio answered {error.status}: {error.msg}") from None
            finally:
                await http.close()
            return f"account {account.friendly_name} ({account.status})"

        return [CredentialCheck(config.api_url, fetch_account)]

    def __init__(self, config: TwilioConfigT, context: ChannelContext) -> None:
        super().__init__(config, context)
        # The section's validator guarantees these when the channel is enabled.
        assert self.config.auth_token is not None and self.config.public_url is not None
        self._validator = RequestValidator(self.config.auth_token.get_secret_value())
        self._public_url = self.config.public_url.rstrip("/")
        self._client: Client | None = None
        self._http: _SafeRetryHttpClient | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"/twilio/{self.name}", self._on_message),
            web.post(f"/twilio/{self.name}/status", self._on_status),
        ]

    def split(self, text: str) -> list[str]:
        return self._fit(to_plain(text))

    def _fit(self, text: str) -> list[str]:
        """Cut plain text into message bodies; text that fits one comes back whole."""
        return split_text(text, MAX_BODY)

    async def send(self, outbound: Outbound) -> None:
        # Parts from `split` fit already, except WhatsApp's (see there).
        for body in self._fit(outbound.text):
            await self._create(outbound, body=body)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # Inbound

    async def _on_message(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        message_sid, sender = _required(form, "MessageSid", "From")
        customer = self._customer(sender)
        if customer is None:
            log.warning("twilio.wrong_channel", channel=self.name, sender=sender)
            raise web.HTTPBadRequest(reason=f"From {sender!r} is not a {self.name} address")
        now = utcnow()
        await self.context.publish(
            Inbound(
                channel=self.name,
                conversation=conversation_key(self.name, customer),
                sender=customer,
                text=str(form.get("Body", "")),
                attachments=_attachments(form),
                provider_message_id=message_sid,
                received_at=now,
                identity=Identity(kind=IdentityKind.PHONE, value=customer),
                extras={
                    "to": str(form.get("To", "")),  # our number: the reply goes out from it
                    "customer_at": now.isoformat(),  # opens WhatsApp's 24-hour window
                    "profile_name": str(form.get("ProfileName", "")),
                },
            )
        )
        # Empty TwiML: Twilio sends nothing itself; the worker's reply goes out by REST.
        return web.Response(text=str(MessagingResponse()), content_type="text/xml")

    async def _on_status(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        message_sid, status = _required(form, "MessageSid", "MessageStatus")
        error_code = form.get("ErrorCode")
        STATUSES.labels(self.name, status).inc()
        log.info(
            "twilio.status",
            channel=self.name,
            provider_message_id=message_sid,
            status=status,
            error_code=error_code,
        )
        customer = self._customer(str(form.get("To", "")))
        if status not in FAILED_STATUSES or customer is None:
            return web.Response()
        key = conversation_key(self.name, customer)
        # A callback Twilio redelivers is reported once.
        reported = f"{self.name}:status:{message_sid}:{status}"
        if await self.context.seen(reported):
            return web.Response()
        if await self.context.conversation(key) is None:
            log.warning("twilio.status_unknown_conversation", channel=self.name)
            return web.Response()
        error = f" (Twilio error {error_code})" if error_code else ""
        detail = f"Twilio reports the message to the customer {status}{error}."
        report = DeliveryReport(
            conversation=key,
            channel=self.name,
            status=status,
            detail=detail,
            provider_message_id=message_sid,
        )
        await self.context.report_undelivered(report)
        await self.context.remember(reported)
        return web.Response()

    async def _verified_form(self, request: web.Request) -> MultiMapping[str]:
        """The form, once `X-Twilio-Signature` proves Twilio sent it; otherwise 403.

        Signed over the URL Twilio called, so it is rebuilt from `public_url`: behind a
        TLS-terminating proxy the request arrives as http:// on an internal host
        (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
        """
        form = await _read_form(request)
        signature = request.headers.get("X-Twilio-Signature", "")
        url = self._public_url + request.raw_path
        if not signature or not self._validator.validate(url, form, signature):
            log.warning(
                "twilio.signature_rejected",
                channel=self.name,
                path=request.path,
                remote=request.remote,
                signature_present=bool(signature),
            )
            raise web.HTTPForbidden(reason="X-Twilio-Signature does not match")
        return form

    def _customer(self, address: str) -> str | None:
        """The customer's number from a Twilio address of this channel, else None."""
        if not address.startswith(self.address_prefix):
            return None
        number = address.removeprefix(self.address_prefix)
        return number if number and ":" not in number else None

    # Outbound

    async def _create(self, outbound: Outbound, **content: str) -> None:
        """One Messages create: `content` is a `body`, or a template's `content_sid`."""
        settings = self.config
        our_number = outbound.extras.get("to") or (
            f"{self.address_prefix}{settings.from_number}" if settings.from_number else None
        )
        message = await self._rest().messages.create_async(
            to=self.address_prefix + ConversationKey.parse(outbound.conversation, parts=1).scope[0],
            from_=our_number,  # None: the Messaging Service picks a sender from its pool
            messaging_service_sid=settings.messaging_service_sid,
            status_callback=f"{self._public_url}/twilio/{self.name}/status",
            **content,
        )
        log.info(
            "twilio.sent", channel=self.name, provider_message_id=message.sid, status=message.status
        )

    def _rest(self) -> Client:
        """The SDK client, made on first send, so only processes that send open a session."""
        if self._client is None:
            settings = self.config
            assert settings.auth_token is not None
            self._http = _SafeRetryHttpClient(
                timeout=settings.timeout, attempts=settings.send_attempts
            )
            client = Client(
                settings.account_sid, settings.auth_token.get_secret_value(), http_client=self._http
            )
            # Neither Client nor AsyncTwilioHttpClient takes a base URL; each API domain holds
            # its own, and Messages live on the `api` domain (twilio/base/domain.py).
            client.api.base_url = settings.api_url
            self._client = client
        return self._client


class SmsChannel(TwilioChannel[SmsConfig]):
    name = "sms"
    address_prefix = ""

    def _fit(self, text: str) -> list[str]:
        return split_sms(text, self.config.max_segments)


class WhatsappChannel(TwilioChannel[WhatsappConfig]):
    name = "whatsapp"
    address_prefix = "whatsapp:"

    def split(self, text: str) -> list[str]:
        """One part: whether the reply goes out as itself or as the template is decided once,
        in `send`, which cuts the text into bodies only when it goes out as itself."""
        plain = to_plain(text)
        return [plain] if plain else []

    async def send(self, outbound: Outbound) -> None:
        opened = _customer_at(outbound.extras)
        if opened is not None and utcnow() - opened < CUSTOMER_WINDOW:
            await super().send(outbound)
            return
        last = f"{(utcnow() - opened).total_seconds() / 3600:.0f} h ago" if opened else "unknown"
        closed = f"WhatsApp's 24-hour window is closed (customer's last message: {last})"
        template = self.config.template
        if template is None:
            detail = (
                f"Reply not sent: {closed} and no template is configured "
                f"(channels.whatsapp.template). The reply was: {outbound.text}"
            )
            report = DeliveryReport(
                conversation=outbound.conversation, channel=self.name, status="held", detail=detail
            )
            await self.context.report_undelivered(report)
            return
        fields = {
            "name": outbound.extras.get("profile_name") or "",
            "agent": outbound.author or "our team",
            # Template variables take no newlines (63021 also caps the whole text).
            "text": _clip(" ".join(outbound.text.split()), TEMPLATE_TEXT_MAX),
        }
        variables = {
            key: value.format(**fields) for key, value in template.content_variables.items()
        }
        await self._create(
            outbound,
            content_sid=template.content_sid,
            content_variables=json.dumps(variables, ensure_ascii=False),
        )
        await self.context.note(
            outbound.conversation,
            f"{closed}: sent the approved template {template.content_sid} instead of the reply.",
        )


async def _read_form(request: web.Request) -> MultiMapping[str]:
    """The webhook's fields. The signature is computed over them, so they are read first, but
    strictly: Twilio posts them form-encoded in UTF-8, and anything else is refused (415, 400)
    before it is checked, rather than decoded by guesswork."""
    if request.content_type != "application/x-www-form-urlencoded":
        log.warning("twilio.malformed", content_type=request.content_type)
        raise web.HTTPUnsupportedMediaType(reason="Twilio webhooks are form-encoded")
    try:
        text = (await request.read()).decode("utf-8")
        return MultiDict(parse_qsl(text, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        log.warning("twilio.malformed", problem="not UTF-8")
        raise web.HTTPBadRequest(reason="the form is not UTF-8") from None


def _required(form: MultiMapping[str], *names: str) -> list[str]:
    """The named fields of a signed webhook; a 400 naming them when one is missing."""
    values = [str(form.get(name) or "") for name in names]
    if not all(values):
        log.warning("twilio.malformed", required=names, fields=sorted(form))
        raise web.HTTPBadRequest(reason=f"{' and '.join(names)} are required")
    return values


def _customer_at(extras: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(extras["customer_at"])
    except (KeyError, TypeError, ValueError):
        return None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _attachments(form: MultiMapping[str]) -> tuple[Attachment, ...]:
    """`NumMedia` items of `MediaUrl{N}`/`MediaContentType{N}`, N from 0 (at most 10)."""
    count = str(form.get("NumMedia", "0"))
    attachments = []
    for index in range(min(int(count), 10) if count.isdigit() else 0):
        url, mime_type = form.get(f"MediaUrl{index}"), form.get(f"MediaContentType{index}")
        if not url:
            continue
        major = str(mime_type or "").partition("/")[0]
        kind = major if major in ("image", "audio", "video") else "document"
        attachments.append(Attachment(kind=kind, url=str(url), mime_type=mime_type or None))
    return tuple(attachments)


# SMS segments (https://www.twilio.com/docs/glossary/what-sms-character-limit): GSM-7 text takes
# 160 septets in one segment, 153 per segment once concatenated, and the extension characters
# (^ { } \ [ ] ~ | €) take two septets each; one character outside GSM-7 makes the whole message
# UCS-2: 70 UTF-16 code units in one segment, 67 once concatenated (an emoji outside the BMP
# takes two units).
_GSM_SINGLE, _GSM_PART = 160, 153
_UCS2_SINGLE, _UCS2_PART = 70, 67
_WORD = re.compile(r"(\s*)(\S+)")


@dataclass(frozen=True, slots=True)
class _Size:
    septets: int | None  # None: some character needs UCS-2
    units: int  # UTF-16 code units

    @classmethod
    def of(cls, text: str) -> _Size:
        try:
            septets: int | None = len(text.encode("gsm03.38"))
        except UnicodeEncodeError:
            septets = None
        return cls(septets, len(text.encode("utf-16-le")) // 2)

    def __add__(self, other: _Size) -> _Size:
        septets = (
            None if self.septets is None or other.septets is None else self.septets + other.septets
        )
        return _Size(septets, self.units + other.units)

    def segments(self) -> int:
        if self.septets is not None:
            size, single, part = self.septets, _GSM_SINGLE, _GSM_PART
        else:
            size, single, part = self.units, _UCS2_SINGLE, _UCS2_PART
        return 1 if size <= single else -(-size // part)


def split_sms(text: str, max_segments: int) -> list[str]:
    """Cut `text` into messages of at most `max_segments` SMS segments each, between words.

    The rule, and why: a phone reassembles the segments of one message, so the segment
    boundaries inside a message are never seen, while a break between two messages is (and
    separate messages may even arrive out of order); so breaks fall between words, and as few
    as possible. Long concatenations deliver less reliably (Twilio advises about 320
    characters: https://www.twilio.com/docs/glossary/what-sms-character-limit), so a message
    holds at most `max_segments` segments (default 3: 459 GSM-7 characters or 201 UCS-2
    units), and it is filled up to that budget, as each segment is billed whole. Each message
    is measured on its own: one UCS-2 character makes only its own message UCS-2. Only a word
    longer than a whole message is cut inside. At most 10 segments keeps a message under
    Twilio's 1,600 characters.
    """
    pieces: list[tuple[str, str]] = []
    for space, word in _WORD.findall(text):
        if _Size.of(word).segments() <= max_segments:
            pieces.append((space, word))
        else:
            parts = _pack([("", char) for char in word], max_segments)
            pieces.extend((space if i == 0 else "", part) for i, part in enumerate(parts))
    return _pack(pieces, max_segments)


def _pack(pieces: list[tuple[str, str]], max_segments: int) -> list[str]:
    """Greedily join (leading space, word) pieces into messages within `max_segments`."""
    messages: list[str] = []
    current, size = "", _Size(0, 0)
    for space, word in pieces:
        if current:
            grown = size + _Size.of(space + word)
            if grown.segments() <= max_segments:
                current, size = current + space + word, grown
                continue
            messages.append(current)
        current, size = word, _Size.of(word)
    if current:
        messages.append(current)
    return messages


class _SafeRetryHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client, retrying only requests Twilio cannot have acted on.

    Twilio's Messages create has no idempotency key: retrying a request Twilio had accepted
    texts the customer twice. Retried, after their Retry-After: 429 (error 20429 "aren't
    processed and are safe to retry", https://www.twilio.com/docs/api/errors/20429) and 503 (the
    server could not handle the request, RFC 9110 §15.6.4); and a connection that never opened.
    Not retried: other 5xx and timeouts, which can come after the message was queued. (The
    SDK's own `max_retries` retries every 5xx, hence this subclass.)
    """

    def __init__(self, *, timeout: float, attempts: int) -> None:
        super().__init__(timeout=timeout)
        self._attempts = attempts

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  (the SDK's signature)
        allow_redirects: bool = False,
    ) -> Response:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=_retry_after,
            retry=retry_if_result(_refused) | retry_if_exception_type(aiohttp.ClientConnectorError),
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            before_sleep=_log_retry,
        )
        if auth is not None:
            # The SDK passes aiohttp a BasicAuth, deprecated since aiohttp 3.14; same header.
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        return await retrying(
            super().request,
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=None,
            # The async client ignores the timeout it was built with (the sync one applies it).
            timeout=timeout or self.timeout,
            allow_redirects=allow_redirects,
        )


_BACKOFF = wait_random_exponential(multiplier=0.5, max=8)


def _refused(response: Response) -> bool:
    return response.status_code in (429, 503)


def _retry_after(state: RetryCallState) -> float:
    outcome = state.outcome
    if outcome is not None and not outcome.failed:
        value = str(outcome.result().headers.get("Retry-After", ""))
        if value.isdigit():
            return min(float(value), MAX_RETRY_AFTER)
    return _BACKOFF(state)


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    failed = outcome is not None and outcome.failed
    log.warning(
        "twilio.retry",
        attempt=state.attempt_number,
        status=None if failed or outcome is None else outcome.result().status_code,
        error=type(outcome.exception()).__name__ if failed and outcome is not None else None,
        wait=round(state.upcoming_sleep, 2),
    )
