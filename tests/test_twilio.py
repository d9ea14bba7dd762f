"""SMS and WhatsApp through Twilio: the real SDK against a local fake of the REST API, and
webhooks signed with Twilio's algorithm, through the whole gateway on both backends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)
import pytest
from aiohttp import ClientResponse
from multidict import MultiDict
from prometheus_client import REGISTRY
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from adapters.twilio import split_sms
from gateway.app.settings import GatewayConfig, parse_config
from gateway.config import ConfigError
from gateway.message import (
    Outbound,
    Role,
    TranscriptEntry,
    conversation_key,
    new_id,
    utcnow,
)
from tests.conftest import backend
from tests.fakes import agent_reply
from tests.fakes.twilio_api import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.harness import Gateway

VECTORS = json.loads(
    (Path(__file__).parent / "fixtures" / "twilio" / "signature_vectors.json").read_text()
)
PUBLIC_URL = "https://support.example.com"
SMS_NUMBER = "+15005550006"
WHATSAPP_NUMBER = "+14155238886"
CUSTOMER = "+16505558893"
TEMPLATE_SID = "HX" + "0a1b2c3d" * 4
QUESTION = "How much is the Duo plan in the UK?"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def twilio_config(
    data_dir: Path, api_url: str, redis_url: str | None = None, *, template: bool = True
) -> GatewayConfig:
    channel = {
        "enabled": True,
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "api_url": api_url,
        "public_url": PUBLIC_URL,
    }
    whatsapp_template = {
        "content_sid": TEMPLATE_SID,
        "content_variables": {"1": "{name}", "2": "{agent}"},
    }
    return GatewayConfig.model_validate(
        {
            "data_dir": data_dir,
            "redis_url": redis_url,
            "channels": {
                "sms": {**channel, "from_number": SMS_NUMBER},
                "whatsapp": {
                    **channel,
                    "from_number": WHATSAPP_NUMBER,
                    "template": whatsapp_template if template else None,
                },
            },
        }
    )


@dataclass(kw_only=True)
class TwilioGateway(Gateway):
    api: FakeTwilio

    async def deliver(
        self, path: str, params: dict[str, str], *, signature: str | None = None
    ) -> ClientResponse:
        """POST a webhook as Twilio would: form-encoded, signed over the public URL."""
        if signature is None:
            signature = sign(PUBLIC_URL + path, params)
        return await self.http.post(path, data=params, headers={"X-Twilio-Signature": signature})

    async def answered(self, channel: str, count: int = 1) -> list[TranscriptEntry]:
        """The bot's replies to the customer once there are `count` and the last turn is saved
        (its reply is recorded once all its parts are sent; the conversation is saved after)."""
        key = conversation_key(channel, CUSTOMER)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            transcript = await self.runtime.store.transcript(key)
            replies = [entry for entry in transcript if entry.role is Role.BOT]
            conversation = await self.runtime.store.load(key)
            saved = (
                conversation is not None and replies and conversation.updated_at >= replies[-1].at
            )
            if len(replies) >= count and saved:
                return replies
            await asyncio.sleep(0.02)
        raise AssertionError(f"{key}: fewer than {count} bot replies within 20 s")

    def bodies(self) -> list[str]:
        return [message["Body"] for message in self.api.messages]

    async def deliveries(self) -> asyncio.Queue[dict[str, Any]]:
        """The "delivery" broadcasts from now on (the hand-off relay's subscription)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.runtime.bus.subscribe("delivery", queue.put_nowait)
        return queue


def sign(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def sms(body: str, **fields: str) -> dict[str, str]:
    """An inbound SMS webhook's fields, as in Twilio's captured samples; a new MessageSid."""
    sid = "SM" + new_id()
    return {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsStatus": "received",
        "Body": body,
        "To": SMS_NUMBER,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": CUSTOMER,
        "ApiVersion": "2010-04-01",
    } | fields


def whatsapp(body: str, **fields: str) -> dict[str, str]:
    return sms(
        body,
        From=f"whatsapp:{CUSTOMER}",
        To=f"whatsapp:{WHATSAPP_NUMBER}",
        ProfileName="Jhonata",
        WaId=CUSTOMER.lstrip("+"),
        **fields,
    )


@asynccontextmanager
async def running(config: GatewayConfig, api: FakeTwilio) -> AsyncIterator[TwilioGateway]:
    async with TwilioGateway.open(config, api=api) as gateway:
        yield gateway


@pytest.fixture
async def api() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture(params=["memory", "redis"])
async def tw(
    request: pytest.FixtureRequest,
    api: FakeTwilio,
    sample_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[TwilioGateway]:
    """The gateway (web and worker roles) with SMS and WhatsApp on, on either backend."""
    redis_url = await backend(request, monkeypatch)
    async with running(twilio_config(sample_data_dir, api.url, redis_url), api) as gateway:
        yield gateway


# Signatures


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: case["name"])
def test_published_signature_examples_verify(case: dict[str, Any]) -> None:
    params = MultiDict(VECTORS["sdk_params"] if case["params"] == "sdk" else case["params"])
    validator = RequestValidator(VECTORS["token"])
    assert validator.validate(case["url"], params, case["signature"])
    tampered = params.copy()
    tampered["Digits"] = "0000"
    assert not validator.validate(case["url"], tampered, case["signature"])


def test_published_json_body_example_verifies() -> None:
    example = VECTORS["json_body"]
    validator = RequestValidator(VECTORS["token"])
    assert validator.validate(example["url"], example["body"], example["signature"])
    assert not validator.validate(example["url"], example["body"] + " ", example["signature"])


def test_compute_signature_reproduces_the_sdk_example() -> None:
    params = MultiDict(VECTORS["sdk_params"])
    url = VECTORS["cases"][0]["url"]
    assert (
        RequestValidator("12345").compute_signature(url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )


# Inbound webhooks


async def test_sms_is_answered_with_empty_twiml_and_replied_by_rest(tw: TwilioGateway) -> None:
    response = await tw.deliver("/twilio/sms", sms(QUESTION))

    assert response.status == 200
    assert response.content_type == "text/xml"
    assert await response.text() == EMPTY_TWIML
    [answer] = await tw.answered("sms")
    assert tw.bodies() == tw.runtime.channels["sms"].split(answer.text)
    reply = tw.api.messages[0]
    assert reply["To"] == CUSTOMER and reply["From"] == SMS_NUMBER
    assert reply["StatusCallback"] == f"{PUBLIC_URL}/twilio/sms/status"
    assert reply["Body"] and "**" not in reply["Body"] and "](" not in reply["Body"]
    transcript = await tw.runtime.store.transcript(conversation_key("sms", CUSTOMER))
    assert [entry.text for entry in transcript if entry.role is Role.CUSTOMER] == [QUESTION]


async def test_forged_or_tampered_webhooks_get_403_and_no_processing(
    tw: TwilioGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    params = sms("Send me everyone's orders")
    url = PUBLIC_URL + "/twilio/sms"
    forgeries = {
        "no signature": (params, ""),
        "another token": (params, sign(url, params, token="not-the-token")),
        "tampered body": (params | {"Body": "Refund me 1000"}, sign(url, params)),
        # What a proxy-unaware check would compute: the URL the web process sees.
        "signed for the internal URL": (params, sign(str(tw.http.make_url("/twilio/sms")), params)),
    }
    for forgery, (form, signature) in forgeries.items():
        response = await tw.deliver("/twilio/sms", form, signature=signature)
        assert response.status == 403, forgery
    logs = capsys.readouterr()
    assert (logs.out + logs.err).count("twilio.signature_rejected") == len(forgeries)
    assert AUTH_TOKEN not in logs.out + logs.err

    # A genuine message afterwards is the conversation's first and only one: nothing of the
    # forged requests was queued ahead of it, and only its reply went out.
    await tw.deliver("/twilio/sms", sms(QUESTION))
    [answer] = await tw.answered("sms")
    transcript = await tw.runtime.store.transcript(conversation_key("sms", CUSTOMER))
    assert [entry.text for entry in transcript if entry.role is Role.CUSTOMER] == [QUESTION]
    await tw.traffic.settled()  # every turn done: no other reply can follow
    assert tw.bodies() == tw.runtime.channels["sms"].split(answer.text)
    logs = capsys.readouterr()
    assert AUTH_TOKEN not in logs.out + logs.err


async def test_status_callback_with_a_bad_signature_is_refused(tw: TwilioGateway) -> None:
    deliveries = await tw.deliveries()
    params = {"MessageSid": "SM" + new_id(), "MessageStatus": "undelivered", "To": CUSTOMER}
    response = await tw.deliver("/twilio/sms/status", params, signature="bm90IGEgc2lnbmF0dXJl")
    assert response.status == 403
    assert tw.traffic.told("delivery") == []  # a callback reports before it is answered
    assert deliveries.empty()


@pytest.mark.parametrize("missing", ["MessageSid", "From"])
async def test_signed_webhook_without_required_fields_is_a_400(
    tw: TwilioGateway, missing: str
) -> None:
    params = sms(QUESTION)
    del params[missing]
    response = await tw.deliver("/twilio/sms", params)
    assert response.status == 400
    assert missing in response.reason


async def test_whatsapp_sender_on_the_sms_webhook_is_a_400(tw: TwilioGateway) -> None:
    response = await tw.deliver("/twilio/sms", whatsapp(QUESTION))
    assert response.status == 400


async def test_redelivered_message_sid_gets_one_reply(tw: TwilioGateway) -> None:
    first = sms(QUESTION)
    await tw.deliver("/twilio/sms", first)
    await tw.answered("sms")
    retried = await tw.deliver("/twilio/sms", first)  # Twilio's redelivery: same MessageSid
    assert retried.status == 200 and await retried.text() == EMPTY_TWIML

    # Messages of a conversation are handled in order: once the next one is answered, the
    # redelivery has been handled (and skipped).
    await tw.deliver("/twilio/sms", sms("Do you ship to Canada?"))
    answers = await tw.answered("sms", 2)
    await tw.traffic.settled()
    assert len(answers) == 2
    split = tw.runtime.channels["sms"].split
    assert tw.bodies() == [part for answer in answers for part in split(answer.text)]
    transcript = await tw.runtime.store.transcript(conversation_key("sms", CUSTOMER))
    customer = [entry.text for entry in transcript if entry.role is Role.CUSTOMER]
    assert customer == [QUESTION, "Do you ship to Canada?"]


async def test_media_is_noted_in_the_transcript(tw: TwilioGateway) -> None:
    media = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME"
    params = sms(
        "Here is the broken lid",
        NumMedia="2",
        MediaUrl0=f"{media}1",
        MediaContentType0="image/jpeg",
        MediaUrl1=f"{media}2",
        MediaContentType1="application/pdf",
    )
    assert (await tw.deliver("/twilio/sms", params)).status == 200
    await tw.answered("sms")
    transcript = await tw.runtime.store.transcript(conversation_key("sms", CUSTOMER))
    assert transcript[0].role is Role.CUSTOMER
    assert transcript[0].text == (
        "Here is the broken lid\n[image attached: image/jpeg]\n[document attached: application/pdf]"
    )


async def test_whatsapp_message_is_replied_in_free_form_within_24_hours(
    tw: TwilioGateway,
) -> None:
    response = await tw.deliver("/twilio/whatsapp", whatsapp(QUESTION))
    assert response.status == 200 and await response.text() == EMPTY_TWIML
    await tw.answered("whatsapp")
    reply = tw.api.messages[0]
    assert reply["To"] == f"whatsapp:{CUSTOMER}"
    assert reply["From"] == f"whatsapp:{WHATSAPP_NUMBER}"
    assert reply["Body"] and "ContentSid" not in reply
    assert reply["StatusCallback"] == f"{PUBLIC_URL}/twilio/whatsapp/status"


async def test_long_whatsapp_reply_within_24_hours_goes_out_in_1600_character_bodies(
    tw: TwilioGateway,
) -> None:
    await tw.deliver("/twilio/whatsapp", whatsapp(QUESTION))
    await tw.answered("whatsapp")
    sent = len(tw.api.messages)

    await relay(tw, "whatsapp", "The Duo plan includes two bags a month. " * 80)  # 3,200 chars

    bodies = tw.bodies()[sent:]
    assert [len(body) <= 1600 for body in bodies] == [True, True, True]
    assert " ".join(bodies) == "Dana: " + ("The Duo plan includes two bags a month. " * 80).strip()
    assert all("ContentSid" not in message for message in tw.api.messages[sent:])


# Status callbacks


async def test_undelivered_status_callback_is_recorded_and_reported_once(tw: TwilioGateway) -> None:
    await tw.deliver("/twilio/sms", sms(QUESTION))
    await tw.answered("sms")
    deliveries = await tw.deliveries()
    labels = {"channel": "sms", "status": "undelivered"}
    before = REGISTRY.get_sample_value("gateway_twilio_status_total", labels) or 0.0
    sid = "SM" + new_id()
    callback = {
        "SmsSid": sid,
        "SmsStatus": "undelivered",
        "MessageStatus": "undelivered",
        "ErrorCode": "30003",
        "To": CUSTOMER,
        "From": SMS_NUMBER,
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
    }

    response = await tw.deliver("/twilio/sms/status", callback)

    assert response.status == 200
    event = await asyncio.wait_for(deliveries.get(), 10)
    key = conversation_key("sms", CUSTOMER)
    assert event == {
        "conversation": key,
        "channel": "sms",
        "status": "undelivered",
        "detail": "Twilio reports the message to the customer undelivered (Twilio error 30003).",
        "provider_message_id": sid,
    }
    last = (await tw.runtime.store.transcript(key))[-1]
    assert last.role is Role.SYSTEM and "undelivered" in last.text and "30003" in last.text
    after = REGISTRY.get_sample_value("gateway_twilio_status_total", labels)
    assert after == before + 1

    # Twilio redelivers the callback: reported once.
    assert (await tw.deliver("/twilio/sms/status", callback)).status == 200
    # A callback reports before it is answered: only the first did, and it was read above.
    assert len(tw.traffic.told("delivery")) == 1
    assert deliveries.empty()
    transcript = await tw.runtime.store.transcript(key)
    assert [entry.role for entry in transcript].count(Role.SYSTEM) == 1


async def test_delivered_status_callback_is_only_counted(tw: TwilioGateway) -> None:
    await tw.deliver("/twilio/sms", sms(QUESTION))
    await tw.answered("sms")
    deliveries = await tw.deliveries()
    callback = {"MessageSid": "SM" + new_id(), "MessageStatus": "delivered", "To": CUSTOMER}
    assert (await tw.deliver("/twilio/sms/status", callback)).status == 200
    assert tw.traffic.told("delivery") == []  # a callback reports before it is answered
    assert deliveries.empty()
    transcript = await tw.runtime.store.transcript(conversation_key("sms", CUSTOMER))
    assert Role.SYSTEM not in {entry.role for entry in transcript}


# Agent replies relayed later (the Slack hand-off)


async def relay(tw: TwilioGateway, channel: str, text: str) -> None:
    """Send an agent's reply as the hand-off relay does: addressed from the stored conversation
    alone, split by the channel's adapter, each part sent."""
    conversation = await tw.runtime.store.load(conversation_key(channel, CUSTOMER))
    assert conversation is not None
    reply = agent_reply(conversation, text)
    adapter = tw.runtime.channels[channel]
    for part in adapter.split(reply.text):
        await adapter.send(reply.model_copy(update={"text": part}))


async def test_agent_reply_reaches_sms_and_whatsapp_customers(tw: TwilioGateway) -> None:
    await tw.deliver("/twilio/sms", sms(QUESTION))
    await tw.deliver("/twilio/whatsapp", whatsapp(QUESTION))
    await tw.answered("sms")
    await tw.answered("whatsapp")
    sent = len(tw.api.messages)

    for channel in ("sms", "whatsapp"):
        await relay(tw, channel, f"the Duo plan is £18 ({channel}).")

    sms_reply, whatsapp_reply = tw.api.messages[sent:]
    assert sms_reply == sms_reply | {
        "To": CUSTOMER,
        "From": SMS_NUMBER,
        "Body": "Dana: the Duo plan is £18 (sms).",
    }
    assert whatsapp_reply == whatsapp_reply | {
        "To": f"whatsapp:{CUSTOMER}",
        "From": f"whatsapp:{WHATSAPP_NUMBER}",
        "Body": "Dana: the Duo plan is £18 (whatsapp).",
    }


async def close_whatsapp_window(tw: TwilioGateway) -> None:
    """Age the customer's last WhatsApp message by 25 hours, as if the agent answered late."""
    conversation = await tw.runtime.store.load(conversation_key("whatsapp", CUSTOMER))
    assert conversation is not None
    stale = (utcnow() - timedelta(hours=25)).isoformat()
    conversation.reply_extras = conversation.reply_extras | {"customer_at": stale}
    await tw.runtime.store.save(conversation)


async def test_whatsapp_reply_after_24_hours_goes_out_as_the_template(tw: TwilioGateway) -> None:
    await tw.deliver("/twilio/whatsapp", whatsapp(QUESTION))
    await tw.answered("whatsapp")
    await close_whatsapp_window(tw)
    sent = len(tw.api.messages)

    # A long reply (two WhatsApp bodies' worth) is still one template.
    await relay(tw, "whatsapp", "Sorry for the wait: the Duo plan is £18. " * 50)

    [template] = tw.api.messages[sent:]
    assert template["ContentSid"] == TEMPLATE_SID
    assert json.loads(template["ContentVariables"]) == {"1": "Jhonata", "2": "Dana"}
    assert "Body" not in template  # a template in Body fails since April 2025 (error 63016)
    assert template["To"] == f"whatsapp:{CUSTOMER}"
    last = (await tw.runtime.store.transcript(conversation_key("whatsapp", CUSTOMER)))[-1]
    assert last.role is Role.SYSTEM and TEMPLATE_SID in last.text


async def test_whatsapp_reply_after_24_hours_without_template_is_held_and_flagged(
    api: FakeTwilio, sample_data_dir: Path
) -> None:
    config = twilio_config(sample_data_dir, api.url, template=False)
    async with running(config, api) as tw:
        await tw.deliver("/twilio/whatsapp", whatsapp(QUESTION))
        await tw.answered("whatsapp")
        await close_whatsapp_window(tw)
        sent = len(api.messages)
        deliveries = await tw.deliveries()

        await relay(tw, "whatsapp", "Sorry for the wait: the Duo plan is £18.")

        event = await asyncio.wait_for(deliveries.get(), 10)
        key = conversation_key("whatsapp", CUSTOMER)
        assert event["status"] == "held" and event["conversation"] == key
        assert event["channel"] == "whatsapp" and event["provider_message_id"] is None
        assert "24-hour window" in event["detail"] and "the Duo plan is £18" in event["detail"]
        last = (await tw.runtime.store.transcript(key))[-1]
        assert last.role is Role.SYSTEM and last.text == event["detail"]
        await tw.traffic.settled()  # relay() awaited its send; no turn is left to send either
        assert len(api.messages) == sent  # nothing went out


# Sending: segments and retries


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def septets(text: str) -> int:
    return len(text.encode("gsm03.38"))


async def test_300_character_reply_with_an_emoji_is_split_by_ucs2_rules(tw: TwilioGateway) -> None:
    reply = "Thanks 🙂" + "".join(f" word{index:02d}" for index in range(41)) + " okay"
    assert len(reply) == 300 and units(reply) == 301  # the emoji is two UTF-16 units
    adapter = tw.runtime.channels["sms"]

    parts = adapter.split(reply)

    # UCS-2 (the emoji is not GSM-7), 3 segments of 67 units per message by default: each part
    # holds whole words, as many as fit in 201 units, and the next word would not have fit.
    assert " ".join(parts) == reply
    assert [units(part) for part in parts] == [198, 102]
    assert units(parts[0] + " " + parts[1].split()[0]) > 3 * 67
    for part in parts:
        await adapter.send(Outbound(channel="sms", conversation=f"sms:{CUSTOMER}", text=part))
    assert tw.bodies() == parts


def test_ucs2_single_segment_budget_is_70_units_and_the_emoji_counts_two() -> None:
    reply = "🙂" + " abcdefgh" * 8  # 1 + 72 characters, 74 UTF-16 units
    parts = split_sms(reply, 1)
    assert [units(part) for part in parts] == [65, 8]
    # Without the emoji the text is GSM-7, and 73 characters are one 160-septet segment.
    assert split_sms(reply.replace("🙂", "A"), 1) == [reply.replace("🙂", "A")]


def test_gsm7_extension_characters_count_two_septets() -> None:
    plain = "Prices " + "x" * 140 + " in EUR"  # 154 characters: one segment
    euros = "Prices " + "x" * 140 + " in €€€€€€"  # 157 characters, 163 septets: two
    assert split_sms(plain, 1) == [plain]
    assert septets(euros) == 163
    assert split_sms(euros, 1) == ["Prices " + "x" * 140 + " in", "€€€€€€"]
    braces = "{[~|^\\]}"  # every character an extension: 16 septets
    assert septets(braces) == 16 and split_sms(braces, 1) == [braces]


def test_gsm7_budget_is_160_alone_and_153_per_segment_concatenated() -> None:
    assert split_sms("a" * 160, 1) == ["a" * 160]
    assert split_sms("a" * 161, 1) == ["a" * 160, "a"]  # one word longer than a message
    words = " ".join(["abcdefghi"] * 40)  # 399 characters
    assert [len(part) for part in split_sms(words, 2)] == [299, 99]  # 306 septets at most


async def test_replies_are_plain_text_with_links_spelled_out(tw: TwilioGateway) -> None:
    reply = "See **our plans**:\n\n- [the price list](https://kettle.example/prices)\n- `Duo`"
    expected = "See our plans:\n\n- the price list (https://kettle.example/prices)\n- Duo"
    assert tw.runtime.channels["sms"].split(reply) == [expected]
    assert tw.runtime.channels["whatsapp"].split(reply) == [expected]


@pytest.mark.parametrize("status", [429, 503])
async def test_refused_send_is_retried_after_retry_after_and_sent_once(
    tw: TwilioGateway, status: int
) -> None:
    tw.api.fail_next(status, code=20429 if status == 429 else None, retry_after=1)
    started = time.monotonic()

    await tw.runtime.channels["sms"].send(
        Outbound(channel="sms", conversation=f"sms:{CUSTOMER}", text="Your order has shipped.")
    )

    assert time.monotonic() - started >= 1.0
    assert tw.api.attempts == 2
    assert [message["Body"] for message in tw.api.messages] == ["Your order has shipped."]


async def test_server_error_is_not_retried_so_a_send_is_never_doubled(tw: TwilioGateway) -> None:
    tw.api.fail_next(500)
    with pytest.raises(TwilioRestException) as raised:
        await tw.runtime.channels["sms"].send(
            Outbound(channel="sms", conversation=f"sms:{CUSTOMER}", text="Your order has shipped.")
        )
    assert raised.value.status == 500
    assert tw.api.attempts == 1 and tw.api.messages == []


# Config


def test_enabled_sms_without_credentials_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_ACCOUNT_SID", raising=False)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    text = "channels:\n  sms:\n    enabled: true\n    public_url: https://support.example.com\n"
    with pytest.raises(ConfigError, match=r"channels\.sms.*TWILIO_AUTH_TOKEN"):
        parse_config(text)


def test_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    config = parse_config(
        "channels:\n  whatsapp:\n    enabled: true\n    public_url: https://support.example.com\n"
        "    from_number: '+14155238886'\n    auth_token: ${TWILIO_AUTH_TOKEN}\n"
    )
    whatsapp_config = config.channels.whatsapp
    assert whatsapp_config.account_sid == ACCOUNT_SID
    assert whatsapp_config.auth_token is not None
    assert whatsapp_config.auth_token.get_secret_value() == AUTH_TOKEN
    assert AUTH_TOKEN not in repr(config)


def test_template_variables_may_use_only_known_fields() -> None:
    text = (
        "channels:\n  whatsapp:\n    template:\n"
        f"      content_sid: {TEMPLATE_SID}\n      content_variables: {{'1': '{{email}}'}}\n"
    )
    with pytest.raises(ConfigError, match=r"content_variables\.1"):
        parse_config(text)
