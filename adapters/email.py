"""Email: a mailbox over IMAP (IDLE, else polling) and an optional SMTP listener in; SMTP out.

One conversation per customer thread. A thread is named by its root: the first id of
`References`, else `In-Reply-To`, else the mail's own `Message-ID`
(https://datatracker.ietf.org/doc/html/rfc5322#section-3.6.4). A reply carries the customer's
References plus their Message-ID, so a client answering it keeps the root first; for clients
that send only `In-Reply-To`, our Message-IDs carry the root in their left part, so any id of
ours resolves to its thread, and so does a bounce of one of our replies. The sender's address
is part of the key: anyone can write `References: <someone else's root>`, and must not land in
(and be answered from) another customer's conversation. For the same reason replies go to the
From address the key holds, never to a `Reply-To` a forger could point elsewhere.

The brain and the transcript see what the customer wrote: the newest reply without the quoted
history and signature (mail-parser-reply), HTML read as text, a new thread's subject first.
Mail that must never be answered (RFC 3834 §2 and BSD vacation(1): auto-replies, bounces,
lists, bulk, automated senders) is not published; a note goes into the conversation it belongs
to, and a bounce of one of our replies is reported on the "delivery" topic. Bot replies per
sender are capped as a last line against loops with auto-responders that send none of those
headers.

The satisfaction ask is a mail with five one-click links to `/email/rating` on the web process
(`channels.email.public_url`), each signed (HMAC-SHA256 under `GATEWAY_EMAIL_RATING_SECRET`,
else a key kept in the data dir) over the conversation, the ask and the score: a link whose
signature does not hold is refused (403), one that holds is published as a RATING event, and
the page thanks the customer. Without a `public_url` the mail asks for a reply with the score.

The connectors process runs `start()`: IMAP marks a mail seen only once it is on the bus, and
the SMTP listener answers 250 only then (a bus outage answers 451: the sender retries), so no
mail is lost; a mail read twice has the same Message-ID and the pipeline's dedupe drops it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from typing import Literal
from urllib.parse import urlencode

import aioimaplib
import aiosmtplib
import structlog
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from mailparser_reply import EmailReplyParser
from pydantic import Field, SecretStr, model_validator
from selectolax.lexbor import LexborHTMLParser
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from adapters.base import BaseChannel, ChannelSection, CheckFailed, CredentialCheck
from adapters.markup import to_plain
from adapters.signing import signature, signed, signing_key
from gateway.channel import Capabilities, ChannelContext
from gateway.config import Seconds, Section, secret
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
    Role,
    conversation_key,
    utcnow,
)
from gateway.results import MessageLost
from gateway.topics import DeliveryReport

log = structlog.get_logger(__name__)

CHANNEL = "email"
# RFC 2177 asks to renew IDLE within 29 minutes; NAT gateways drop quiet links sooner.
IDLE_RENEW = 300.0
RECONNECT_MIN, RECONNECT_MAX = 1.0, 60.0
# A longer root is not encoded in our Message-IDs (References still carries it).
MAX_ENCODED_ROOT = 200
# Folding at 78 columns makes the stdlib RFC 2047-encode any longer msg-id, which breaks
# threading (aiosmtplib flattens with policy.SMTP), so mail is flattened here, folded only
# past RFC 5322's 998: https://datatracker.ietf.org/doc/html/rfc5322#section-2.1.1
SMTP_POLICY = policy.SMTP.clone(max_line_length=998)
SYNTHETIC_ID = f"@{CHANNEL}.invalid>"
_MSG_ID = re.compile(r"<[^<>\s]+>")
_OUR_ID = re.compile(r"\.gw-([A-Za-z0-9_-]+)@([^>]+)>$")
_REPLY_PREFIX = re.compile(r"^\s*re\s*:", re.IGNORECASE)
# vacation(1) skips senders ending so (https://cgit.freebsd.org/src/tree/usr.bin/vacation);
# the no-reply spellings are what bulk senders use today.
_AUTOMATED_SENDER = re.compile(
    r"(mailer-daemon|postmaster|mailer|uucp|-request|-relay|-bounces?"
    r"|no-?reply|do-?not-?reply)$"
)
_LIST_HEADERS = ("List-Id", "List-Unsubscribe", "List-Post", "Mailing-List")
# A separator line the reply parser leaves at the end of a cut (Outlook's underscores).
_RULE = re.compile(r"[-_=*]{3,}")
# The newest reply is at the top: the parser's regexes need not read megabytes of history.
MAX_BODY_CHARS = 100_000
_BLANK_RUNS = re.compile(r"\n{3,}")
_HTML_BLOCKS = "p,div,li,tr,h1,h2,h3,h4,h5,h6,table,ul,ol,pre,section,article"
_ATTACHMENT_KINDS = {"image": "image", "audio": "audio", "video": "video"}
RATING_PATH = "/email/rating"
RATING_SECRET_FILE = "email-rating-secret"  # in the data dir, when the variable is unset
# What the rating page says when the pipeline's own thanks does not come in time.
RATED = "Thank you, your rating is recorded."


class ImapConfig(Section):
    """The mailbox the connectors process reads (IDLE when the server has it, else polling)."""

    host: str
    port: int = Field(default=993, ge=1, le=65535)
    # Implicit TLS (IMAPS, 993); aioimaplib has no STARTTLS, so `false` is plaintext (loopback).
    tls: bool = True
    user: str
    password: SecretStr | None = Field(default_factory=lambda: secret("EMAIL_IMAP_PASSWORD"))
    folder: str = "INBOX"
    poll_interval: Seconds = Field(default=60.0, description="when the server has no IDLE")
    timeout: Seconds = Field(default=30.0, description="per IMAP command")


class SmtpConfig(Section):
    """Where replies are sent."""

    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["starttls", "tls", "none"] = "starttls"  # tls: implicit TLS (usually 465)
    user: str | None = None
    password: SecretStr | None = Field(default_factory=lambda: secret("EMAIL_SMTP_PASSWORD"))
    timeout: Seconds = Field(default=30.0, description="per SMTP exchange")
    send_attempts: int = Field(default=4, ge=1, le=10, description="tries on a 4xx or a drop")


class SmtpListenConfig(Section):
    """Direct delivery: an SMTP server in the connectors process (behind your MX)."""

    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=1, le=65535)
    max_size: int = Field(default=10_000_000, ge=1024, description="bytes per message")


class EmailConfig(ChannelSection):
    from_address: str | None = Field(default=None, pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    from_name: str | None = None
    imap: ImapConfig | None = None  # unset: no mailbox is read
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    smtp_listen: SmtpListenConfig | None = None  # unset: no SMTP listener
    # Loop protection on top of the auto-reply headers (RFC 3834 §2): bot replies per sender.
    max_replies_per_sender: int = Field(default=10, ge=1)
    reply_window: Seconds = Field(default=3600.0, description="seconds the reply count covers")
    # Languages whose "On ... wrote:" / "Sent from my ..." lines mark quoted history
    # (mail-parser-reply's codes: en, de, fr, es, it, nl, pl, sv, da, cs, ja, ko, zh).
    quote_languages: list[str] = Field(default_factory=lambda: ["en", "de", "fr", "es"])
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+$",
        description="scheme and host of the web process (https://support.example.com), where "
        "the satisfaction ask's one-click links point; unset: the customer replies 1 to 5",
    )
    rating_secret: SecretStr | None = Field(
        default_factory=lambda: secret("GATEWAY_EMAIL_RATING_SECRET"),
        description="signs the rating links; unset: a key kept in the data dir",
    )

    @model_validator(mode="after")
    def _usable(self) -> EmailConfig:
        if self.enabled and not self.from_address:
            raise ValueError("from_address is required when enabled")
        if self.imap is not None and self.imap.password is None:
            raise ValueError("imap.password is required (set EMAIL_IMAP_PASSWORD)")
        return self


@dataclass(frozen=True, slots=True)
class Bounce:
    """A delivery status notification (RFC 3464) about one of our replies."""

    action: str  # failed, delayed, ...
    detail: str
    message_id: str | None  # our bounced Message-ID


@dataclass(frozen=True, slots=True)
class Skipped:
    """A mail that is never answered: why, and the conversation it belongs to, if known."""

    reason: str
    conversation: str | None = None
    bounce: Bounce | None = None


class ReplyLimited(Exception):
    """A bot reply refused by the per-sender cap (`channels.email.max_replies_per_sender`)."""


class EmailChannel(BaseChannel[EmailConfig]):
    name = CHANNEL
    capabilities = Capabilities(text_limit=None, rating_page=True)

    @classmethod
    def credential_checks(cls, config: EmailConfig) -> list[CredentialCheck]:
        """SMTP EHLO, STARTTLS or TLS as configured, and login when a user is set; IMAP login
        and SELECT of the folder when a mailbox is read. Cut off by a timeout, the link is
        closed without a goodbye: a polite QUIT or LOGOUT could wait out the same silence."""
        smtp, imap = config.smtp, config.imap

        async def smtp_login() -> str:
            client = aiosmtplib.SMTP(
                hostname=smtp.host,
                port=smtp.port,
                use_tls=smtp.tls == "tls",
                start_tls=smtp.tls == "starttls",
                timeout=smtp.timeout,
            )
            await client.connect()  # the greeting, and EHLO + STARTTLS in starttls mode
            try:
                await client.ehlo()
                done = {"starttls": "EHLO and STARTTLS ok", "tls": "EHLO over TLS ok"}.get(
                    smtp.tls, "EHLO ok"
                )
                if smtp.user is not None:
                    if smtp.password is None:
                        raise CheckFailed(f"user {smtp.user} has no password (EMAIL_SMTP_PASSWORD)")
                    try:
                        await client.login(smtp.user, smtp.password.get_secret_value())
                    except aiosmtplib.SMTPAuthenticationError as error:
                        reply = f"{error.code} {error.message}"
                        raise CheckFailed(f"login as {smtp.user} rejected: {reply}") from None
                    done += f", logged in as {smtp.user}"
                await client.quit()
            finally:
                client.close()
            return done

        async def imap_login() -> str:
            assert imap is not None and imap.password is not None  # required with `imap`
            kind = aioimaplib.IMAP4_SSL if imap.tls else aioimaplib.IMAP4
            client = kind(host=imap.host, port=imap.port, timeout=imap.timeout)
            try:
                await client.wait_hello_from_server()
                try:
                    login = await client.login(imap.user, imap.password.get_secret_value())
                    _ok(login, f"LOGIN as {imap.user}")
                    _ok(await client.select(_quoted(imap.folder)), f"SELECT {imap.folder}")
                except aioimaplib.Error as error:
                    raise CheckFailed(str(error)) from None
                await client.logout()
            finally:
                if client.protocol.transport is not None:
                    client.protocol.transport.close()
            return f"logged in as {imap.user}, {imap.folder} selected"

        checks = [CredentialCheck(f"{smtp.host}:{smtp.port}", smtp_login, "SMTP")]
        if imap is not None:
            checks.insert(0, CredentialCheck(f"{imap.host}:{imap.port}", imap_login, "IMAP"))
        return checks

    def __init__(self, config: EmailConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        if not self.config.from_address:  # the config refuses an enabled channel without one
            raise ValueError("channels.email.from_address is not set")
        self._from_address = self.config.from_address
        self._domain = self._from_address.rsplit("@", 1)[1]
        self._max_chars = context.limits.max_message_chars
        self._mailbox: asyncio.Task[None] | None = None
        self._listener: asyncio.Server | None = None
        self._rating_key = signing_key(
            self.config.rating_secret, context.data_dir / RATING_SECRET_FILE
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.get(RATING_PATH, self._on_rating)]

    async def start(self) -> None:
        if self.config.imap is not None:
            self._mailbox = asyncio.create_task(self._watch_mailbox(), name="email-imap")
        listen = self.config.smtp_listen
        if listen is not None:
            loop = asyncio.get_running_loop()
            self._listener = await loop.create_server(
                lambda: SMTP(
                    _Delivery(self),
                    hostname=self._domain,
                    data_size_limit=listen.max_size,
                    loop=loop,
                ),
                listen.host,
                listen.port,
            )
            log.info("email.listening", host=listen.host, port=listen.port)

    async def stop(self) -> None:
        if self._mailbox is not None:
            self._mailbox.cancel()
            await asyncio.gather(self._mailbox, return_exceptions=True)
            self._mailbox = None
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None

    async def send(self, outbound: Outbound) -> None:
        address, root = _key_parts(outbound.conversation)
        bot = outbound.role is Role.BOT
        if bot and not await self._allowed(address):
            log.warning("email.reply_limited", conversation=outbound.conversation)
            raise ReplyLimited(
                f"{self.config.max_replies_per_sender} bot replies to this sender "
                f"within {self.config.reply_window:g} s already"
            )
        mail = self._compose(outbound, address, root, bot=bot)
        await self._deliver(mail.as_bytes(policy=SMTP_POLICY), address)
        log.info("email.sent", conversation=outbound.conversation, message_id=mail["Message-ID"])

    async def ask_rating(self, ask: RatingAsk) -> None:
        """The question and a signed link per score; without a `public_url`, a reply asked."""
        if self.config.public_url is None:
            await super().ask_rating(ask)
            return
        links = "\n".join(f"{score}: {self.rating_link(ask, score)}" for score in SCORES)
        await self.send(ask.reply.model_copy(update={"text": f"{ask.reply.text}\n\n{links}"}))

    def rating_link(self, ask: RatingAsk, score: int) -> str:
        parts = {"c": ask.reply.conversation, "a": ask.id, "s": str(score)}
        sig = signature(self._rating_key, *parts.values())
        return f"{self.config.public_url}{RATING_PATH}?{urlencode({**parts, 'sig': sig})}"

    async def _on_rating(self, request: web.Request) -> web.Response:
        """A rating link clicked: recorded once (the pipeline keeps the first answer), then a
        thank-you page, in the words the pipeline thanks with when they come in time."""
        query = request.query
        conversation, ask, score = (query.get(name, "") for name in ("c", "a", "s"))
        if not signed(self._rating_key, query.get("sig", ""), conversation, ask, score):
            log.warning("email.rating_rejected", reason="signature does not match")
            raise web.HTTPForbidden(reason="this rating link is not valid")
        try:
            rating = Rating(ask=ask, score=int(score))
            address, _ = _key_parts(conversation)
        except ValueError:  # signed by us, so never; unless the key was reused elsewhere
            raise web.HTTPBadRequest(reason="not a rating link") from None
        message = rating.event(CHANNEL, conversation, address)
        thanks = RATED
        with self.context.await_result(message.id) as result:
            await self.context.publish(message)
            try:
                wait = self.context.limits.reply_timeout
                turn = await asyncio.wait_for(asyncio.shield(result), wait)
                thanks = turn.replies[0] if turn.replies else thanks
            except (TimeoutError, MessageLost):
                log.warning("email.rating_unconfirmed")
        return web.Response(
            text=_thanks_page(thanks, rating.score),
            content_type="text/html",
            headers={"Content-Security-Policy": "default-src 'none'", "Cache-Control": "no-store"},
        )

    async def _allowed(self, address: str) -> bool:
        """Loop protection on top of the auto-reply headers: bot replies per sender, counted
        across every worker on the same store."""
        config = self.config
        sender = f"email-replies:{address}"
        return await self.context.within_quota(
            sender, config.max_replies_per_sender, config.reply_window
        )

    async def receive(self, raw: bytes, *, envelope_sender: str | None = None) -> None:
        """Publish one mail, or note why it is not answered. Raises only when the bus or the
        store failed, so the caller leaves the mail to be read again."""
        try:
            result = await asyncio.to_thread(  # parsing a big mail must not stall the loop
                read_mail,
                raw,
                own_address=self._from_address,
                envelope_sender=envelope_sender,
                quote_languages=self.config.quote_languages,
                max_chars=self._max_chars,
            )
        except Exception:  # a parser bug must not stop the mailbox; the mail stays in it
            log.exception("email.unreadable", size=len(raw))
            return
        if isinstance(result, Inbound):
            await self.context.publish(result)
            log.info(
                "email.received",
                conversation=result.conversation,
                provider_message_id=result.provider_message_id,
            )
            return
        log.info("email.not_answered", reason=result.reason, conversation=result.conversation)
        if result.conversation is not None:
            await self._record(result.conversation, result)

    async def _record(self, key: str, skipped: Skipped) -> None:
        if await self.context.conversation(key) is None:
            return  # not one of our conversations: nothing to note it in
        bounce = skipped.bounce
        if bounce is None:
            text = f"Email received and not answered ({skipped.reason})."
        elif bounce.action != "failed":  # delayed, relayed, ...: not (yet) a failure
            text = f"Email reply {bounce.action}: {bounce.detail}"
        else:
            detail = f"Email reply not delivered: {bounce.detail}"
            report = DeliveryReport(
                conversation=key,
                channel=CHANNEL,
                status="failed",
                detail=detail,
                provider_message_id=bounce.message_id,
            )
            await self.context.report_undelivered(report)
            return
        await self.context.note(key, text)

    def _compose(self, outbound: Outbound, address: str, root: str, *, bot: bool) -> EmailMessage:
        extras = outbound.extras
        parent: str | None = extras.get("message_id")
        references = [*extras.get("references", ()), parent] if parent else [root]
        mail = EmailMessage()
        mail["From"] = formataddr((self.config.from_name or "", self._from_address))
        mail["To"] = address
        mail["Subject"] = reply_subject(extras.get("subject", ""))
        mail["Date"] = format_datetime(utcnow())
        mail["Message-ID"] = our_message_id(root, self._domain)
        if parent or not root.endswith(SYNTHETIC_ID):  # a mail without ids has none to cite
            mail["In-Reply-To"] = parent or root
            mail["References"] = " ".join(references)
        if bot:  # https://datatracker.ietf.org/doc/html/rfc3834#section-5
            mail["Auto-Submitted"] = "auto-replied"
        # Exchange's own switch for out-of-office and read receipts, so they do not loop back.
        mail["X-Auto-Response-Suppress"] = "All"
        mail.set_content(to_plain(outbound.text))
        return mail

    async def _deliver(self, raw: bytes, recipient: str) -> None:
        """Sent with one Message-ID across attempts; retried on a 4xx or a dropped link only
        (https://datatracker.ietf.org/doc/html/rfc5321#section-4.2.1: 4yz is transient)."""
        smtp = self.config.smtp
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(multiplier=1, max=30),
            stop=stop_after_attempt(smtp.send_attempts),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                await aiosmtplib.send(
                    raw,
                    sender=self._from_address,
                    recipients=[recipient],
                    hostname=smtp.host,
                    port=smtp.port,
                    username=smtp.user,
                    password=smtp.password.get_secret_value() if smtp.password else None,
                    use_tls=smtp.tls == "tls",
                    start_tls=smtp.tls == "starttls",
                    timeout=smtp.timeout,
                )

    async def _watch_mailbox(self) -> None:
        """Read the mailbox until cancelled, reconnecting with doubling delays after errors."""
        delay = RECONNECT_MIN

        def connected() -> None:
            nonlocal delay
            delay = RECONNECT_MIN

        while True:
            try:
                await self._mailbox_session(connected)
            except Exception as error:
                log.warning(
                    "email.imap_failed", error=f"{type(error).__name__}: {error}", retry_in=delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _mailbox_session(self, connected: Callable[[], None]) -> None:
        imap = self.config.imap
        assert imap is not None and imap.password is not None
        kind = aioimaplib.IMAP4_SSL if imap.tls else aioimaplib.IMAP4
        client = kind(host=imap.host, port=imap.port, timeout=imap.timeout)
        try:
            await client.wait_hello_from_server()
            _ok(await client.login(imap.user, imap.password.get_secret_value()), "LOGIN")
            _ok(await client.select(_quoted(imap.folder)), f"SELECT {imap.folder}")
            idle = client.has_capability("IDLE")
            log.info("email.imap_connected", folder=imap.folder, idle=idle)
            connected()
            while True:
                # A mail that arrives while unseen ones are read is announced (EXISTS) in the
                # replies to those commands, and so never again in the IDLE that follows:
                # read until a search finds nothing new.
                while await self._read_unseen(client):
                    pass
                if idle:
                    await _idle(client)
                else:
                    await asyncio.sleep(imap.poll_interval)
        finally:
            await _disconnect(client)

    async def _read_unseen(self, client: aioimaplib.IMAP4) -> bool:
        """Hand every unseen mail on; True if there were any, or the server announced more
        (EXISTS) meanwhile."""
        found = await client.uid_search("UNSEEN", charset=None)
        _ok(found, "UID SEARCH UNSEEN")
        uids = found.lines[0].decode().split()
        announced = any(line.endswith(b" EXISTS") for line in found.lines[1:])
        for uid in uids:
            fetched = await client.uid("fetch", uid, "(BODY.PEEK[])")
            _ok(fetched, "UID FETCH")
            raw = next((bytes(line) for line in fetched.lines if isinstance(line, bytearray)), None)
            if raw is not None:
                await self.receive(raw)
            _ok(await client.uid("store", uid, "+FLAGS.SILENT (\\Seen)"), "UID STORE")
        return bool(uids) or announced


class _Delivery:
    """aiosmtpd handler: 250 once the mail is on the bus, 451 (retry later) if that failed."""

    def __init__(self, adapter: EmailChannel) -> None:
        self._adapter = adapter

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        try:
            await self._adapter.receive(raw, envelope_sender=envelope.mail_from)
        except Exception:
            log.exception("email.listener_failed")
            return "451 4.3.0 Temporary failure, please retry"
        return "250 2.0.0 OK"


def _thanks_page(thanks: str, score: int) -> str:
    said = html.escape(thanks)
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{said}</title></head><body><h1>{said}</h1>"
        f"<p>{'★' * score}{'☆' * (SCORES.stop - 1 - score)} ({score}/5)</p></body></html>"
    )


# Reading mail


def read_mail(
    raw: bytes,
    *,
    own_address: str,
    envelope_sender: str | None = None,
    quote_languages: Sequence[str] = ("en",),
    max_chars: int | None = None,
) -> Inbound | Skipped:
    """One raw RFC 5322 message as an `Inbound`, or why it must not be answered."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    own_domain = own_address.rsplit("@", 1)[1].lower()
    message_id = next(iter(_ids(message, "Message-ID")), None)
    references = _ids(message, "References")
    in_reply_to = _ids(message, "In-Reply-To")
    # The parent's thread for our reply's References (RFC 5322 §3.6.4).
    thread_ids = references or (in_reply_to if len(in_reply_to) == 1 else [])
    root = (references or in_reply_to or [message_id or ""])[0]
    root = decode_root(root, own_domain) or root
    # A mail without a Message-ID is named by its bytes, so reading it twice dedupes.
    provider_id = message_id or f"<{hashlib.sha256(raw).hexdigest()}{SYNTHETIC_ID}"
    root = root or provider_id
    sender = parseaddr(_header(message, "From"))[1].lower()
    conversation = conversation_key(CHANNEL, sender, root) if "@" in sender else None

    reason = _not_to_answer(message, sender, own_address.lower(), envelope_sender)
    if reason == "bounce":
        bounce, conversation = _bounce(message, own_domain)
        return Skipped(reason, conversation, bounce)
    if reason is not None or conversation is None:
        return Skipped(reason or "no sender address", conversation)

    subject = _header(message, "Subject")
    text = newest_reply(_body_text(message)[:MAX_BODY_CHARS], quote_languages)
    if not thread_ids and subject and subject.lower() not in text.lower():
        text = f"{subject}\n\n{text}".strip()  # a new thread's subject often is the question
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip() + " [...]"
    return Inbound(
        channel=CHANNEL,
        conversation=conversation,
        sender=sender,
        text=text,
        attachments=_attachments(message),
        provider_message_id=provider_id,
        thread=root,
        identity=Identity(kind=IdentityKind.EMAIL, value=sender),
        extras={
            "subject": subject,
            "message_id": message_id,
            "references": thread_ids,
        },
    )


def newest_reply(text: str, languages: Sequence[str]) -> str:
    """The text above the quoted history, without the signature."""
    replies = EmailReplyParser(languages=list(languages)).read(text).replies
    lines = (replies[0].body if replies else text).splitlines()
    while lines and (not lines[-1].strip() or _RULE.fullmatch(lines[-1].strip())):
        lines.pop()
    return "\n".join(lines).strip()


def reply_subject(subject: str) -> str:
    subject = " ".join(subject.split())
    if _REPLY_PREFIX.match(subject):
        return subject
    return f"Re: {subject}" if subject else "Re: your message"


def our_message_id(root: str, domain: str) -> str:
    """A fresh Message-ID whose left part carries the thread root."""
    if len(root) > MAX_ENCODED_ROOT:
        return make_msgid(idstring="gw", domain=domain)
    token = base64.urlsafe_b64encode(root.encode()).decode().rstrip("=")
    return make_msgid(idstring=f"gw-{token}", domain=domain)


def decode_root(message_id: str, own_domain: str) -> str | None:
    """The thread root a Message-ID of ours carries; None for anyone else's."""
    match = _OUR_ID.search(message_id)
    if match is None or match.group(2).lower() != own_domain:
        return None
    token = match.group(1)
    try:
        root = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return root if _MSG_ID.fullmatch(root) else None


def _not_to_answer(
    message: EmailMessage, sender: str, own_address: str, envelope_sender: str | None
) -> str | None:
    """Why this mail must get no automatic answer (RFC 3834 §2, vacation(1)); None to answer."""
    content_type = message.get_content_type()
    if content_type in ("multipart/report", "message/delivery-status"):
        report = message.get_param("report-type", "") or "delivery-status"
        return "bounce" if report == "delivery-status" else f"report ({report})"
    auto = _header(message, "Auto-Submitted").split(";")[0].strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    precedence = _header(message, "Precedence").lower()
    if precedence.startswith(("bulk", "junk", "list")):
        return f"Precedence: {precedence}"
    for name in _LIST_HEADERS:
        if _header(message, name):
            return f"list mail ({name})"
    suppress = _header(message, "X-Auto-Response-Suppress").lower()
    if any(value in suppress for value in ("all", "autoreply", "oof")):
        return f"X-Auto-Response-Suppress: {suppress}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if _header(message, name):
            return f"auto-reply ({name})"
    return_path = _header(message, "Return-Path")
    if envelope_sender in ("", "<>") or return_path.replace(" ", "") == "<>":
        return "null envelope sender (a bounce or notification)"
    if "@" not in sender:
        return "no sender address"
    if _AUTOMATED_SENDER.search(sender.split("@", 1)[0]):
        return f"automated sender {sender}"
    if sender == own_address:
        return "sent from our own address"
    return None


def _bounce(message: EmailMessage, own_domain: str) -> tuple[Bounce, str | None]:
    """The status of a DSN and the conversation of our bounced reply, when it is ours."""
    fields: dict[str, str] = {}
    original: Message | None = None
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/delivery-status":
            for block in part.get_payload():
                if isinstance(block, Message):
                    for name in ("Action", "Status", "Diagnostic-Code", "Final-Recipient"):
                        if name not in fields and (value := _header(block, name)):
                            fields[name] = value
        elif content_type in ("message/rfc822", "message/global") and original is None:
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            original = first if isinstance(first, Message) else None
        elif content_type == "text/rfc822-headers" and original is None:
            original = HeaderParser(policy=policy.default).parsestr(_decoded(part))
    candidates = [*(_ids(original, "Message-ID") if original else []), *_ids(message, "References")]
    candidates += _ids(message, "In-Reply-To")
    ours = next((found for found in candidates if decode_root(found, own_domain)), None)
    action = fields.get("Action", "failed").lower()
    detail = fields.get("Diagnostic-Code") or fields.get("Status") or _header(message, "Subject")
    bounce = Bounce(action=action, detail=" ".join(detail.split())[:300], message_id=ours)
    if ours is None:
        return bounce, None
    recipient = fields.get("Final-Recipient", "").rpartition(";")[2].strip()
    if "@" not in recipient and original is not None:
        recipient = parseaddr(_header(original, "To"))[1]
    root = decode_root(ours, own_domain)
    if "@" not in recipient or root is None:
        return bounce, None
    return bounce, conversation_key(CHANNEL, recipient.lower(), root)


def _body_text(message: EmailMessage) -> str:
    try:
        part = message.get_body(preferencelist=("plain", "html"))
    except Exception:  # policy.default's MIME walker can fail on broken structures
        part = None
    if part is None:
        return ""
    text = _decoded(part)
    return html_text(text) if part.get_content_subtype() == "html" else text


def html_text(html: str) -> str:
    """Visible text of an HTML mail, one line per block; quoted `<blockquote>`s dropped."""
    tree = LexborHTMLParser(html)
    tree.strip_tags(["script", "style", "head", "title", "blockquote"])
    root = tree.body or tree.root
    if root is None:
        return ""
    for node in root.css("br"):
        node.replace_with("\n")
    for node in root.css(_HTML_BLOCKS):
        node.insert_before("\n")
        node.insert_after("\n")
    lines = (" ".join(line.split()) for line in root.text(separator="").splitlines())
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def _decoded(part: Message) -> str:
    """A text part's content. Hand-written because the stdlib's `get_content()` raises on an
    unknown charset: the declared charset when Python knows it (bad bytes replaced), else
    UTF-8, else Windows-1252, the usual truth behind mislabelled 8-bit mail."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset()
    if charset:
        with contextlib.suppress(LookupError):
            return payload.decode(charset, errors="replace")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("cp1252", errors="replace")


def _attachments(message: EmailMessage) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    try:
        parts = list(message.iter_attachments()) if message.is_multipart() else []
    except Exception:  # as for get_body: a broken structure has no attachments to show
        parts = []
    for part in parts:
        maintype = part.get_content_maintype()
        payload = part.get_payload(decode=True)
        try:
            name = part.get_filename()
        except Exception:  # a malformed filename parameter
            name = None
        found.append(
            Attachment(
                kind=_ATTACHMENT_KINDS.get(maintype, "document"),
                name=name,
                mime_type=part.get_content_type(),
                size=len(payload) if isinstance(payload, bytes) else None,
            )
        )
    return tuple(found)


def _header(message: Message, name: str) -> str:
    """A header as one line of text; never raises on a malformed field."""
    try:
        value = message.get(name)
        return " ".join(str(value).split()) if value is not None else ""
    except Exception:  # policy.default's structured parsers fail on some broken fields
        pass
    raw = next((v for k, v in message.raw_items() if k.lower() == name.lower()), None)
    if raw is None:
        return ""
    try:
        return " ".join(str(make_header(decode_header(raw))).split())
    except Exception:  # undecodable encoded words: the raw text is the best there is
        return " ".join(str(raw).split())


def _ids(message: Message, name: str) -> list[str]:
    """The msg-ids of a header (`<left@right>`; a bare `left@right` is bracketed). Encoded words
    are decoded first: some senders (Python's own, among them) encode long ids."""
    value = _header(message, name)
    found = _MSG_ID.findall(value)
    if not found and value and "@" in value and " " not in value:
        found = [f"<{value}>"]
    return found


def _key_parts(conversation: str) -> tuple[str, str]:
    """The customer's address and the thread root back from a conversation key."""
    key = ConversationKey.parse(conversation, parts=2)
    if key.channel != CHANNEL or len(key.scope) != 2:
        raise ValueError(f"not an email conversation: {conversation!r}")
    address, root = key.scope
    return address, root


# IMAP helpers


def _ok(response: aioimaplib.Response, command: str) -> None:
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
        raise aioimaplib.Error(f"{command}: {response.result} {detail}")


def _quoted(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _idle(client: aioimaplib.IMAP4) -> None:
    """Wait in IDLE until the server reports a change or it is time to renew."""
    idle = await client.idle_start(timeout=IDLE_RENEW)
    try:
        await client.wait_server_push(timeout=IDLE_RENEW + 30)
    finally:
        client.idle_done()
        await asyncio.wait_for(idle, timeout=30)


async def _disconnect(client: aioimaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        if client.has_pending_idle():
            client.idle_done()
        await asyncio.wait_for(client.logout(), timeout=5)
    transport = client.protocol.transport
    if transport is not None:  # a failed logout leaves the socket open
        transport.close()


# SMTP helpers


def _transient(error: BaseException) -> bool:
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return all(400 <= refused.code < 500 for refused in error.recipients)
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return 400 <= error.code < 500
    return isinstance(
        error,
        aiosmtplib.SMTPConnectError
        | aiosmtplib.SMTPServerDisconnected
        | aiosmtplib.SMTPTimeoutError,
    )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "email.send_retry",
        attempt=state.attempt_number,
        wait=round(state.upcoming_sleep, 2),
        error=f"{type(error).__name__}: {error}",
    )
