"""Email end to end against real servers on loopback: Dovecot (IMAP, with and without IDLE) for
the mailbox, the gateway's own aiosmtpd listener for direct delivery, and an aiosmtpd sink that
records what the gateway sends. Plus the corpus of malformed and oddly encoded mail."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aioimaplib
import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.asyncio import Redis
from structlog.testing import capture_logs

from adapters.email import (
    EmailChannel,
    Skipped,
    decode_root,
    our_message_id,
    read_mail,
    reply_subject,
)
from gateway.app.settings import GatewayConfig
from gateway.message import Inbound, Role, conversation_key
from tests.conftest import free_port
from tests.fakes import until
from tests.harness import Gateway
from tests.imap_server import PASSWORD, ImapServer, dovecot

SUPPORT = "support@kettle.example"
CUSTOMER = "ann@customer.example"
FIXTURES = Path(__file__).parent / "fixtures" / "mail"
CORPUS = sorted(
    path
    for path in FIXTURES.rglob("*")
    if path.is_file() and "LICENSE" not in path.name and path.suffix != ".md"
)
_users = itertools.count()
WAIT = 30.0  # seconds a test waits for the gateway (a loaded CI machine is slow)


def mail(
    *,
    body: str = "How much is the Duo plan in the UK?",
    subject: str = "Duo plan price",
    sender: str = CUSTOMER,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
    html: str | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = f"Ann Customer <{sender}>"
    message["To"] = SUPPORT
    message["Subject"] = subject
    message["Message-ID"] = message_id or make_msgid(domain="customer.example")
    for name, value in (headers or {}).items():
        message[name] = value
    if html is None:
        message.set_content(body)
    else:
        message.set_content(html, subtype="html")
    return message.as_bytes()


class Sink:
    """An SMTP server recording what it receives; answers 451 to the next `refuse` mails."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.raw: list[bytes] = []
        self.refuse = 0
        self.attempts = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            return "451 4.3.0 Try again later"
        assert isinstance(envelope.content, bytes)
        self.raw.append(envelope.content)
        self.mails.append(BytesParser(policy=policy.default).parsebytes(envelope.content))
        return "250 2.0.0 OK"

    async def wait_for(self, count: int) -> list[EmailMessage]:
        await until(lambda: len(self.mails) >= count, WAIT)
        return self.mails


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), ready_timeout=30)
    controller.start()
    yield handler, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def imap() -> Iterator[ImapServer]:
    with dovecot(idle=True) as server:
        yield server


@pytest.fixture(scope="module")
def imap_without_idle() -> Iterator[ImapServer]:
    with dovecot(idle=False) as server:
        yield server


@dataclass(kw_only=True)
class Mailroom(Gateway):
    """The gateway (worker and connectors roles) with email on, and the customer's side."""

    sink: Sink
    imap: ImapServer | None
    imap_user: str

    @property
    def adapter(self) -> EmailChannel:
        return self.channel(EmailChannel)

    async def deliver(self, raw: bytes) -> None:
        """Put a mail in the support mailbox, as the customer's provider would."""
        assert self.imap is not None
        client = aioimaplib.IMAP4(host=self.imap.host, port=self.imap.port, timeout=10)
        await client.wait_hello_from_server()
        assert (await client.login(self.imap_user, self.imap.password)).result == "OK"
        assert (await client.append(raw, mailbox="INBOX")).result == "OK"
        await client.logout()

    async def unseen(self) -> list[str]:
        assert self.imap is not None
        client = aioimaplib.IMAP4(host=self.imap.host, port=self.imap.port, timeout=10)
        await client.wait_hello_from_server()
        await client.login(self.imap_user, self.imap.password)
        await client.select("INBOX")
        found = await client.uid_search("UNSEEN", charset=None)
        await client.logout()
        return found.lines[0].decode().split()

    async def all_read(self) -> bool:
        return await self.unseen() == []

    async def transcript(self, key: str) -> list[tuple[Role, str]]:
        entries = await self.runtime.store.transcript(key)
        return [(entry.role, entry.text) for entry in entries]


@asynccontextmanager
async def _mailroom(
    tmp_path: Path,
    sink: tuple[Sink, int],
    imap: ImapServer | None,
    redis_url: str | None = None,
    **email: Any,
) -> AsyncIterator[Mailroom]:
    handler, port = sink
    user = f"support{next(_users)}"
    settings: dict[str, Any] = {
        "enabled": True,
        "from_address": SUPPORT,
        "from_name": "Kettle & Crane Support",
        "smtp": {"host": "127.0.0.1", "port": port, "tls": "none"},
        **email,
    }
    if imap is not None:
        settings["imap"] = {
            "host": imap.host,
            "port": imap.port,
            "tls": False,
            "user": user,
            "password": imap.password,
            "poll_interval": 0.2,
        }
    config = GatewayConfig.model_validate(
        {"data_dir": str(tmp_path), "redis_url": redis_url, "channels": {"email": settings}}
    )
    async with Mailroom.open(config, sink=handler, imap=imap, imap_user=user) as room:
        await room.adapter.start()
        try:
            yield room
        finally:
            await room.adapter.stop()


@pytest.fixture
async def mailroom(
    tmp_path: Path, sink: tuple[Sink, int], imap: ImapServer
) -> AsyncIterator[Mailroom]:
    async with _mailroom(tmp_path, sink, imap) as room:
        yield room


def _key(root: str, sender: str = CUSTOMER) -> str:
    return conversation_key("email", sender, root)


# --- the mailbox, end to end -------------------------------------------------------------


async def test_a_mail_in_the_mailbox_is_answered_in_its_thread(mailroom: Mailroom) -> None:
    raw = mail(
        subject="Duo plan price",
        message_id="<a@customer.example>",
        # A Reply-To is not followed: the conversation belongs to the From address.
        headers={"References": "<r@customer.example>", "Reply-To": "thief@evil.example"},
    )
    await mailroom.deliver(raw)
    (reply,) = await mailroom.sink.wait_for(1)
    assert reply["In-Reply-To"] == "<a@customer.example>"
    assert str(reply["References"]).split() == ["<r@customer.example>", "<a@customer.example>"]
    assert reply["Subject"] == "Re: Duo plan price"
    assert reply["To"] == CUSTOMER
    assert reply["From"].addresses[0].addr_spec == SUPPORT
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Date"] is not None
    assert str(reply["Message-ID"]).endswith("@kettle.example>")
    assert reply.get_content().strip()
    headers = mailroom.sink.raw[0].split(b"\r\n\r\n")[0]
    assert b"=?" not in headers  # ids are never RFC 2047-encoded (clients could not thread)
    assert await mailroom.unseen() == []  # marked seen once it was on the bus
    transcript = await mailroom.transcript(_key("<r@customer.example>"))
    assert [role for role, _ in transcript] == [Role.CUSTOMER, Role.BOT]


async def test_a_mail_is_answered_on_the_redis_backend(
    tmp_path: Path, sink: tuple[Sink, int], imap: ImapServer, redis: Redis, redis_url: str
) -> None:
    async with _mailroom(tmp_path, sink, imap, redis_url) as room:
        await room.deliver(mail(message_id="<redis@customer.example>"))
        (reply,) = await room.sink.wait_for(1)
        assert reply["In-Reply-To"] == "<redis@customer.example>"
        assert await redis.keys("gw:quota:*")  # the reply cap is counted in Redis


async def test_a_mailbox_without_idle_is_polled(
    tmp_path: Path, sink: tuple[Sink, int], imap_without_idle: ImapServer
) -> None:
    async with _mailroom(tmp_path, sink, imap_without_idle) as room:
        await room.deliver(mail(message_id="<poll@customer.example>"))
        (reply,) = await room.sink.wait_for(1)
        assert reply["In-Reply-To"] == "<poll@customer.example>"


async def test_the_mailbox_is_read_once_the_imap_server_is_back(
    tmp_path: Path, sink: tuple[Sink, int]
) -> None:
    port = free_port()
    with capture_logs() as logs, ExitStack() as stack:
        async with _mailroom(tmp_path, sink, ImapServer("127.0.0.1", port)) as room:
            await until(lambda: any(e["event"] == "email.imap_failed" for e in logs), WAIT)
            await asyncio.to_thread(stack.enter_context, dovecot(port=port))
            await room.deliver(mail(message_id="<back@customer.example>"))
            (reply,) = await room.sink.wait_for(1)
            assert reply["In-Reply-To"] == "<back@customer.example>"
    assert all(PASSWORD not in repr(event) for event in logs)  # the secret is never logged


async def test_a_customer_reply_to_our_reply_lands_in_the_same_conversation(
    mailroom: Mailroom,
) -> None:
    await mailroom.deliver(mail(message_id="<first@customer.example>"))
    (ours,) = await mailroom.sink.wait_for(1)
    # A client that sends only In-Reply-To (no References) still finds the thread.
    answer = mail(
        subject=f"RE: {ours['Subject']}",
        body=f"And in Germany?\n\nOn Mon, 1 Jan 2024, Support <{SUPPORT}> wrote:\n> old answer",
        message_id="<second@customer.example>",
        headers={"In-Reply-To": str(ours["Message-ID"])},
    )
    await mailroom.deliver(answer)
    _, second = await mailroom.sink.wait_for(2)
    assert second["In-Reply-To"] == "<second@customer.example>"
    assert second["Subject"] == "RE: Re: Duo plan price"  # theirs kept: no "Re: RE: Re:"
    transcript = await mailroom.transcript(_key("<first@customer.example>"))
    customer = [text for role, text in transcript if role is Role.CUSTOMER]
    assert customer == ["Duo plan price\n\nHow much is the Duo plan in the UK?", "And in Germany?"]


async def test_auto_replies_lists_and_bounces_get_no_answer(mailroom: Mailroom) -> None:
    traffic = mailroom.traffic
    await mailroom.deliver(mail(message_id="<asked@customer.example>"))
    (ours,) = await mailroom.sink.wait_for(1)
    thread = {"In-Reply-To": str(ours["Message-ID"]), "References": str(ours["References"])}
    await mailroom.deliver(
        mail(
            subject="Automatic reply: Re: Duo plan price",
            body="I am out of the office until Monday.",
            headers={"Auto-Submitted": "auto-replied", **thread},
        )
    )
    await mailroom.deliver(mail(headers={"List-Id": "<coffee.lists.example>"}))
    await mailroom.deliver(mail(headers={"Precedence": "bulk"}))
    await mailroom.deliver(
        mail(sender="MAILER-DAEMON@mx.customer.example", subject="Undeliverable")
    )
    # A mail that says it is not automatic is answered: the last one in the mailbox.
    await mailroom.deliver(
        mail(message_id="<human@customer.example>", headers={"Auto-Submitted": "no"})
    )
    replies = await mailroom.sink.wait_for(2)
    # A mail is marked read once it is on the bus or noted as not answered: when none is
    # unread and every turn is done, nothing else can be sent.
    await until(mailroom.all_read, WAIT)
    await traffic.settled()
    assert [reply["In-Reply-To"] for reply in mailroom.sink.mails] == [
        "<asked@customer.example>",
        "<human@customer.example>",
    ]
    assert len(replies) == 2
    # The out-of-office reply is noted in the conversation it answered, not answered itself.
    transcript = await mailroom.transcript(_key("<asked@customer.example>"))
    assert transcript[-1] == (
        Role.SYSTEM,
        "Email received and not answered (Auto-Submitted: auto-replied).",
    )


async def test_a_bounce_of_our_reply_is_reported_as_a_delivery_failure(
    mailroom: Mailroom,
) -> None:
    reports: list[dict[str, Any]] = []
    mailroom.runtime.bus.subscribe("delivery", reports.append)
    await mailroom.deliver(mail(message_id="<q@customer.example>"))
    (ours,) = await mailroom.sink.wait_for(1)
    await mailroom.deliver(_bounce_of(ours))
    await until(lambda: bool(reports), WAIT)
    assert reports == [
        {
            "conversation": _key("<q@customer.example>"),
            "channel": "email",
            "status": "failed",
            "detail": "Email reply not delivered: smtp; 550 5.1.1 <ann@customer.example>: "
            "Recipient address rejected",
            "provider_message_id": str(ours["Message-ID"]),
        }
    ]
    transcript = await mailroom.transcript(_key("<q@customer.example>"))
    assert transcript[-1] == (
        Role.SYSTEM,
        "Email reply not delivered: smtp; 550 5.1.1 <ann@customer.example>: "
        "Recipient address rejected",
    )
    assert len(mailroom.sink.mails) == 1  # and the bounce itself is not answered


def _bounce_of(ours: EmailMessage) -> bytes:
    """A delivery status notification (RFC 3464) as Postfix writes one."""
    boundary = "DSN-boundary"
    return (
        "From: MAILER-DAEMON@mx.customer.example (Mail Delivery System)\r\n"
        f"To: {SUPPORT}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "Message-ID: <dsn1@mx.customer.example>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.example\r\n\r\n"
        f"Final-Recipient: rfc822; {CUSTOMER}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{CUSTOMER}>: Recipient address rejected\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"From: {ours['From']}\r\n"
        f"To: {ours['To']}\r\n"
        f"Subject: {ours['Subject']}\r\n"
        f"Message-ID: {ours['Message-ID']}\r\n"
        f"--{boundary}--\r\n"
    ).encode()


async def test_bot_replies_per_sender_are_capped(
    tmp_path: Path, sink: tuple[Sink, int], imap: ImapServer
) -> None:
    async with _mailroom(tmp_path, sink, imap, max_replies_per_sender=2) as room:
        ids = [f"<n{number}@customer.example>" for number in range(3)]
        for message_id in ids:
            await room.deliver(mail(message_id=message_id))

        async def all_handled() -> bool:
            # Three threads are three conversations, handled concurrently, in any order.
            lengths = [len(await room.transcript(_key(message_id))) for message_id in ids]
            return all(length >= 2 for length in lengths)

        await until(all_handled, WAIT)
        answered = {str(reply["In-Reply-To"]) for reply in room.sink.mails}
        assert len(room.sink.mails) == 2 and len(answered) == 2
        (refused,) = set(ids) - answered
        role, text = (await room.transcript(_key(refused)))[-1]
        assert role is Role.SYSTEM and "ReplyLimited" in text


async def test_a_mail_that_arrives_while_another_is_read_is_read_without_waiting_for_idle(
    tmp_path: Path, sink: tuple[Sink, int], imap: ImapServer
) -> None:
    # The server announces the second mail in its replies to the first one's FETCH/STORE, so
    # the IDLE that follows would not report it again (until the renewal, minutes later).
    async with _mailroom(tmp_path, sink, imap) as room:
        publish = room.runtime.bus.publish
        later = mail(message_id="<later@customer.example>")

        async def publish_and_receive_another(message: Inbound) -> None:
            if message.provider_message_id == "<first@customer.example>":
                await room.deliver(later)
            await publish(message)

        room.runtime.bus.publish = publish_and_receive_another  # type: ignore[method-assign]
        await room.deliver(mail(message_id="<first@customer.example>"))
        # Read at once: 2 s here. Left to Dovecot's own periodic mailbox check, it took 19 s.
        await until(lambda: len(room.sink.mails) == 2, 8.0)
        assert {str(reply["In-Reply-To"]) for reply in room.sink.mails} == {
            "<first@customer.example>",
            "<later@customer.example>",
        }


async def test_a_send_refused_with_451_is_retried_and_sent_once(
    tmp_path: Path, sink: tuple[Sink, int]
) -> None:
    handler, _ = sink
    handler.refuse = 1
    async with _mailroom(tmp_path, sink, None) as room:
        message = read_mail(mail(message_id="<retry@customer.example>"), own_address=SUPPORT)
        assert isinstance(message, Inbound)
        await room.runtime.bus.publish(message)
        (reply,) = await handler.wait_for(1)
        assert reply["In-Reply-To"] == "<retry@customer.example>"
        assert handler.attempts == 2


async def test_the_smtp_listener_takes_direct_delivery(
    tmp_path: Path, sink: tuple[Sink, int]
) -> None:
    port = free_port()
    listen = {"host": "127.0.0.1", "port": port}
    async with _mailroom(tmp_path, sink, None, smtp_listen=listen) as room:
        traffic = room.traffic
        raw = mail(message_id="<direct@customer.example>")
        await aiosmtplib.send(
            raw, sender=CUSTOMER, recipients=[SUPPORT], hostname="127.0.0.1", port=port
        )
        (reply,) = await room.sink.wait_for(1)
        assert reply["In-Reply-To"] == "<direct@customer.example>"
        # A bounce arrives with a null envelope sender and is accepted, never answered.
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            await client.mail("")  # MAIL FROM:<>
            await client.rcpt(SUPPORT)
            response = await client.data(mail(subject="Returned mail"))
        assert response.code == 250
        await traffic.settled()  # the listener answers 250 only once it handled the mail
        assert len(room.sink.mails) == 1


# --- reading mail --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "Yes, the grinder arrived. Thanks!\n\n--\nAnn Customer\nCustomer Ltd\n\n"
            "On Tue, 2 Jan 2024 at 09:00, Kettle & Crane <support@kettle.example> wrote:\n"
            "> Has your grinder arrived?\n> Best, the team\n",
            "Yes, the grinder arrived. Thanks!",
        ),
        ("Reply\n-----Original Message-----\nQuote", "Reply"),
        (
            "Reply!\n\nOn 15-Dec-2011, at 6:54 PM, Sean Carter <s.carter@example.com> wrote:\n"
            "> It's the ROC!\n>-Sean",
            "Reply!",
        ),
        ("Danke!\n\nAm 02.01.2024 um 09:00 schrieb Support <s@kettle.example>:\n> Frage", "Danke!"),
        ("Thanks, it works.\n\nSent from my iPhone", "Thanks, it works."),
    ],
)
def test_quoted_history_and_signatures_are_not_sent_to_the_brain(body: str, expected: str) -> None:
    message = read_mail(
        mail(body=body, headers={"In-Reply-To": "<x@kettle.example>"}),
        own_address=SUPPORT,
        quote_languages=["en", "de"],
    )
    assert isinstance(message, Inbound)
    assert message.text == expected


def test_an_html_only_mail_is_read_as_text() -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<div>Hi <b>team</b>,<br>my order <a href='https://shop.example/o/1'>#123</a> "
        "has not arrived.</div><ul><li>Duo plan</li><li>UK</li></ul>"
        "<div class='gmail_quote'><blockquote>Earlier message</blockquote></div>"
        "</body></html>"
    )
    message = read_mail(
        mail(html=html, headers={"In-Reply-To": "<x@kettle.example>"}), own_address=SUPPORT
    )
    assert isinstance(message, Inbound)
    assert message.text == "Hi team,\nmy order #123 has not arrived.\n\nDuo plan\n\nUK"


@pytest.mark.parametrize(
    ("headers", "sender", "reason"),
    [
        ({"Auto-Submitted": "auto-replied"}, CUSTOMER, "Auto-Submitted: auto-replied"),
        ({"Auto-Submitted": "auto-generated"}, CUSTOMER, "Auto-Submitted: auto-generated"),
        ({"Precedence": "junk"}, CUSTOMER, "Precedence: junk"),
        (
            {"List-Unsubscribe": "<mailto:u@lists.example>"},
            CUSTOMER,
            "list mail (List-Unsubscribe)",
        ),
        ({"X-Auto-Response-Suppress": "All"}, CUSTOMER, "X-Auto-Response-Suppress: all"),
        ({"Return-Path": "<>"}, CUSTOMER, "null envelope sender (a bounce or notification)"),
        ({}, "postmaster@customer.example", "automated sender postmaster@customer.example"),
        ({}, "no-reply@shop.example", "automated sender no-reply@shop.example"),
        ({}, SUPPORT, "sent from our own address"),
    ],
)
def test_mail_that_must_not_be_answered_says_why(
    headers: dict[str, str], sender: str, reason: str
) -> None:
    result = read_mail(mail(headers=headers, sender=sender), own_address=SUPPORT)
    assert isinstance(result, Skipped)
    assert result.reason == reason


def test_threading_follows_rfc_5322() -> None:
    # The parent has In-Reply-To and no References: ours carries both ids (RFC 5322 §3.6.4).
    message = read_mail(
        mail(message_id="<a@x>", headers={"In-Reply-To": "<p@x>"}), own_address=SUPPORT
    )
    assert isinstance(message, Inbound)
    assert message.conversation == _key("<p@x>")
    assert message.extras["references"] == ["<p@x>"] and message.extras["message_id"] == "<a@x>"
    assert reply_subject("Re: Duo") == "Re: Duo" and reply_subject("Duo") == "Re: Duo"
    ours = our_message_id("<p@x>", "kettle.example")
    assert decode_root(ours, "kettle.example") == "<p@x>"
    assert decode_root(ours, "elsewhere.example") is None


def test_another_sender_cannot_join_a_customers_thread() -> None:
    mallory = read_mail(
        mail(sender="mallory@evil.example", headers={"References": "<r@customer.example>"}),
        own_address=SUPPORT,
    )
    assert isinstance(mallory, Inbound)
    assert mallory.conversation != _key("<r@customer.example>")


def test_attachments_become_notes() -> None:
    message = EmailMessage()
    message["From"] = CUSTOMER
    message["Subject"] = "Broken grinder"
    message["Message-ID"] = "<att@customer.example>"
    message.set_content("Photo attached.")
    message.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename="grinder.png")
    result = read_mail(message.as_bytes(), own_address=SUPPORT)
    assert isinstance(result, Inbound)
    assert result.content == "Broken grinder\n\nPhoto attached.\n[image attached: grinder.png]"


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: str(path.relative_to(FIXTURES)))
def test_malformed_and_oddly_encoded_mail_is_read_or_skipped_with_a_reason(path: Path) -> None:
    result = read_mail(path.read_bytes(), own_address=SUPPORT)
    if isinstance(result, Skipped):
        assert result.reason.strip()
        if "bounce" in path.parts:
            assert result.reason == "bounce" or result.reason.startswith("automated sender")
    else:
        assert isinstance(result, Inbound)
        assert result.conversation.startswith("email:") and result.provider_message_id
        assert "\ufffd" not in result.text or path.name in _UNDECODABLE


# Mail whose bytes are invalid in any charset: the replacement character is the honest reading.
_UNDECODABLE = {"mailformed-headers.eml", "broken-headers.eml"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("flanker/8bitmime.eml", "Превел"),  # 8-bit UTF-8 without a transfer encoding
        ("cpython/msg_35.txt", "counter to RFC 2822"),  # no blank line before the body
        ("flanker/no-ctype.eml", "I'm just testing message parsing"),  # no Content-Type
    ],
)
def test_odd_encodings_are_read_right(name: str, expected: str) -> None:
    result = read_mail((FIXTURES / name).read_bytes(), own_address=SUPPORT)
    assert isinstance(result, Inbound)
    assert expected in result.text


def test_the_adapter_module_does_not_shadow_the_stdlib_email_package() -> None:
    import email

    import adapters.email

    assert email.__name__ == "email" and email is not adapters.email
    assert Path(email.__file__).parent.name == "email"  # the stdlib's package, not ours
