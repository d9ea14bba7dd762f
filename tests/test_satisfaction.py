"""The satisfaction ask end to end: each channel's real SDK against its fake, agents in the Slack
fake, answers archived in a real SQLite archive (gateway/satisfaction.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientWebSocketResponse
from prometheus_client import REGISTRY

from adapters.discord_channel import DiscordChannel
from adapters.email import RATING_PATH
from adapters.slack import EVENTS_PATH
from adapters.telegram import SECRET_HEADER, WEBHOOK_PATH
from gateway.app.settings import GatewayConfig
from gateway.archive.schema import satisfaction
from gateway.message import (
    Conversation,
    InboundKind,
    Mode,
    Role,
    TranscriptEntry,
    conversation_key,
)
from gateway.satisfaction import told_language
from tests.conftest import backend
from tests.fakes import until
from tests.fakes.discord_api import DM_CHANNEL_ID, FakeDiscord, button_press
from tests.fakes.discord_api import TOKEN as DISCORD_TOKEN
from tests.fakes.slack_api import (
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    block_action,
    signed_interaction,
)
from tests.fakes.telegram_api import SECRET as TELEGRAM_SECRET
from tests.fakes.telegram_api import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.test_archive import archiving, count
from tests.test_email import SUPPORT, Sink
from tests.test_email import sink as smtp_sink  # noqa: F401  (the `sink` fixture)
from tests.test_handoff import DANA, DANA_NAME, ESCALATIONS, Handoff, agent_event
from tests.test_twilio import PUBLIC_URL, SMS_NUMBER, sign

THANKS = "Thanks for your rating!"
QUESTION = "How would you rate the help you got, from 1 (poor) to 5 (great)?"
SLACK_CUSTOMER, SLACK_DM = "U0CUSTOMER", "D0CUSTOMER"
TELEGRAM_CHAT = 4242


def config(
    tmp_path: Path,
    slack: FakeSlack,
    channels: dict[str, Any] | None = None,
    redis_url: str | None = None,
    data_dir: Path | None = None,
    **satisfaction: Any,
) -> GatewayConfig:
    """The hand-off on the Slack fake, `channels` beside it, a SQLite archive of this test
    (in `tmp_path`; the data dir is `data_dir`, for a knowledge base, or `tmp_path` too)."""
    archive = f"sqlite+aiosqlite:///{tmp_path / 'archive.sqlite3'}"
    slack_section = {
        "enabled": True,
        "bot_token": BOT_TOKEN,
        "signing_secret": SIGNING_SECRET,
        "api_url": slack.base_url,
    }
    return GatewayConfig.model_validate(
        {
            "data_dir": str(data_dir or tmp_path),
            "redis_url": redis_url,
            "channels": {"slack": slack_section, **(channels or {})},
            "handoff": {"escalation_channel": ESCALATIONS, "sweep_interval": 0.05},
            "archive": {"database_url": archive, "flush_interval": 0.05},
            "satisfaction": satisfaction,
        }
    )


@asynccontextmanager
async def open_gateway(cfg: GatewayConfig, slack: FakeSlack, **open: Any) -> AsyncIterator[Handoff]:
    async with Handoff.open(cfg, slack=slack, **open) as gw, archiving(gw):
        yield gw


async def resolved_by_an_agent(
    gw: Handoff, key: str, *, customer: str, extras: dict[str, Any] | None = None
) -> None:
    """The conversation was with Dana; she presses Resolve (the relay tells the customer)."""
    await gw.runtime.store.save(
        Conversation(
            key=key,
            channel=key.split(":", 1)[0],
            customer=customer,
            mode=Mode.HUMAN,
            agent_id=DANA,
            agent=DANA_NAME,
            reply_extras=extras or {},
        )
    )
    await gw.publish(agent_event(InboundKind.RESOLVE, key, DANA, DANA_NAME))


async def ratings(gw: Handoff, expected: int) -> int:
    """The archive's satisfaction rows, once the writer had time to write `expected` of them
    (and, to see that no more come, once everything published was processed)."""
    assert gw.runtime.archive is not None
    await until(lambda: _rows_at_least(gw, expected))
    await gw.traffic.settled()
    await asyncio.sleep(0.2)  # a few flush intervals of the writer
    return await count(gw.runtime.archive, satisfaction)


async def _rows_at_least(gw: Handoff, expected: int) -> bool:
    assert gw.runtime.archive is not None
    try:
        return await count(gw.runtime.archive, satisfaction) >= expected
    except Exception:  # the writer has not migrated the archive yet
        return False


async def score_of(gw: Handoff, key: str) -> int | None:
    conversation = await gw.runtime.store.load(key)
    assert conversation is not None
    return conversation.satisfaction.score


def thanked(gw: Handoff, key: str) -> Callable[[], Awaitable[int]]:
    async def times() -> int:
        entries = await gw.runtime.store.transcript(key)
        return sum(1 for entry in entries if entry.role is Role.BOT and entry.text == THANKS)

    return times


def answers_counted(score: int, channel: str) -> float:
    labels = {"score": str(score), "channel": channel}
    return REGISTRY.get_sample_value("gateway_satisfaction_answers_total", labels) or 0.0


# -- each channel: asked once after an agent resolves, the first answer archived once ----------


@dataclass
class Customer:
    """One channel's customer side: how the ask shows, and how they press an answer."""

    key: str
    customer: str
    extras: dict[str, Any]
    asks: Callable[[], list[Any]]  # the asks the customer was shown
    press: Callable[[Handoff, Any, int], Awaitable[None]]  # press a score on an ask
    acknowledged: Callable[[], bool] = lambda: True  # the channel answered the press natively


async def _slack_press(gw: Handoff, ask: dict[str, Any], score: int) -> None:
    button = next(b for b in ask["blocks"][1]["elements"] if b["text"]["text"] == str(score))
    action = block_action(
        button["action_id"],
        button["value"],
        user=SLACK_CUSTOMER,
        channel=SLACK_DM,
        message_ts=ask["ts"],
    )
    body, headers = signed_interaction(SIGNING_SECRET, action)
    response = await gw.http.post(EVENTS_PATH, data=body, headers=headers)
    assert response.status == 200, await response.text()


async def _telegram_press(gw: Handoff, ask: dict[str, Any], score: int) -> None:
    button = ask["reply_markup"]["inline_keyboard"][0][score - 1]
    update = {
        "update_id": 900 + score + len(gw.traffic.published),
        "callback_query": {
            "id": f"cq-{score}-{len(gw.traffic.published)}",
            "from": {"id": TELEGRAM_CHAT, "is_bot": False, "first_name": "Ada"},
            "chat_instance": "ci-1",
            "message": {
                "message_id": 1,
                "date": 1,
                "chat": {"id": TELEGRAM_CHAT, "type": "private", "first_name": "Ada"},
                "text": ask["text"],
            },
            "data": button["callback_data"],
        },
    }
    response = await gw.http.post(
        WEBHOOK_PATH, json=update, headers={SECRET_HEADER: TELEGRAM_SECRET}
    )
    assert response.status == 200, await response.text()


async def _discord_press(
    discord: FakeDiscord, gw: Handoff, ask: dict[str, Any], score: int
) -> None:
    created = next(m for m in discord.created.values() if m["components"] == ask["components"])
    custom_id = ask["components"][0]["components"][score - 1]["custom_id"]
    published = len(gw.traffic.published)
    await discord.dispatch("INTERACTION_CREATE", button_press(custom_id, created))
    await until(lambda: len(gw.traffic.published) > published)


@asynccontextmanager
async def customer_on(
    channel: str, tmp_path: Path, slack: FakeSlack
) -> AsyncIterator[tuple[Handoff, Customer]]:
    """A gateway with `channel` on (its provider faked), and that channel's customer."""
    if channel == "slack":
        async with open_gateway(config(tmp_path, slack), slack) as gw:
            yield (
                gw,
                Customer(
                    key=conversation_key("slack", TEAM_ID, SLACK_DM),
                    customer=SLACK_CUSTOMER,
                    extras={},
                    asks=lambda: [m for m in slack.posted(SLACK_DM) if len(m["blocks"]) > 1],
                    press=_slack_press,
                ),
            )
    elif channel == "telegram":
        async with FakeTelegram() as telegram:
            section = {
                "enabled": True,
                "bot_token": TELEGRAM_TOKEN,
                "webhook_secret": TELEGRAM_SECRET,
                "api_url": telegram.url,
            }
            cfg = config(tmp_path, slack, {"telegram": section})
            async with open_gateway(cfg, slack) as gw:
                yield (
                    gw,
                    Customer(
                        key=conversation_key("telegram", str(TELEGRAM_CHAT)),
                        customer="Ada Lovelace",
                        extras={},
                        asks=lambda: [m for m in telegram.sent() if "reply_markup" in m],
                        press=_telegram_press,
                        acknowledged=lambda: bool(telegram.sent("answerCallbackQuery")),
                    ),
                )
    elif channel == "discord":
        async with FakeDiscord() as discord:
            section = {"enabled": True, "bot_token": DISCORD_TOKEN, "api_url": discord.api_url}
            cfg = config(tmp_path, slack, {"discord": section})
            async with open_gateway(cfg, slack) as gw:
                adapter = gw.channel(DiscordChannel)
                await adapter.start()
                try:
                    yield (
                        gw,
                        Customer(
                            key=conversation_key("discord", DM_CHANNEL_ID),
                            customer="Ada Lovelace",
                            extras={},
                            asks=lambda: [
                                m for m in discord.messages(DM_CHANNEL_ID) if m.get("components")
                            ],
                            press=lambda gw, ask, score: _discord_press(discord, gw, ask, score),
                            # The buttons are redrawn disabled: UPDATE_MESSAGE (7).
                            acknowledged=lambda: discord.interaction_responses()[0]["type"] == 7,
                        ),
                    )
                finally:
                    await adapter.stop()
    else:
        raise AssertionError(channel)


@pytest.mark.parametrize("channel", ["slack", "telegram", "discord"])
async def test_a_resolved_customer_is_asked_once_and_their_first_press_is_archived_once(
    channel: str, tmp_path: Path
) -> None:
    async with (
        FakeSlack(users={DANA: DANA_NAME}) as slack,
        customer_on(channel, tmp_path, slack) as (gw, customer),
    ):
        await resolved_by_an_agent(gw, customer.key, customer=customer.customer)
        await until(lambda: len(customer.asks()) == 1)
        ask = customer.asks()[0]
        counted = answers_counted(4, channel)

        await customer.press(gw, ask, 4)
        await until(lambda: _equals(score_of(gw, customer.key), 4))
        await customer.press(gw, ask, 4)  # a double click
        await customer.press(gw, ask, 1)  # and a change of mind: the first answer counts

        assert await ratings(gw, 1) == 1
        assert await score_of(gw, customer.key) == 4
        assert await thanked(gw, customer.key)() == 1
        assert answers_counted(4, channel) == counted + 1
        assert answers_counted(1, channel) == 0
        assert len(customer.asks()) == 1
        assert customer.acknowledged()


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_the_web_chat_draws_buttons_and_a_double_click_rates_once(tmp_path: Path) -> None:
    async with (
        FakeSlack(users={DANA: DANA_NAME}) as slack,
        open_gateway(config(tmp_path, slack), slack) as gw,
    ):
        socket = await gw.http.ws_connect("/webchat/ws")
        hello = await socket.receive_json()
        key = conversation_key("webchat", hello["conversation_id"].split(".")[0])
        await resolved_by_an_agent(gw, key, customer="webchat:visitor")
        ask = await _frame(socket, "rating")
        assert ask["text"] == QUESTION and ask["ask_id"]

        for _ in range(2):
            await socket.send_json({"type": "rating", "ask_id": ask["ask_id"], "score": 5})
        frames = [await _frame(socket, "rated", "reply") for _ in range(3)]
        assert sorted(f["type"] for f in frames) == ["rated", "rated", "reply"]
        assert [f["text"] for f in frames if f["type"] == "reply"] == [THANKS]
        await socket.send_json({"type": "rating", "ask_id": ask["ask_id"], "score": 9})
        assert (await _frame(socket, "error"))["message"] == "not a rating of 1 to 5"

        assert await ratings(gw, 1) == 1
        assert await thanked(gw, key)() == 1
        await socket.close()


async def _frame(socket: ClientWebSocketResponse, *kinds: str) -> dict[str, Any]:
    """The next frame of one of `kinds` (typing and the relay's lines pass by)."""
    while True:
        frame: dict[str, Any] = await asyncio.wait_for(socket.receive_json(), 10)
        if frame["type"] in kinds:
            return frame


# -- SMS and WhatsApp: "reply 1-5" ---------------------------------------------------------------


async def test_an_sms_that_is_just_a_digit_rates_and_one_with_more_words_is_a_question(
    tmp_path: Path,
) -> None:
    async with FakeSlack(users={DANA: DANA_NAME}) as slack, FakeTwilio() as twilio:
        section = {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_url": twilio.url,
            "public_url": PUBLIC_URL,
            "from_number": SMS_NUMBER,
        }
        async with open_gateway(config(tmp_path, slack, {"sms": section}), slack) as gw:
            rating, question = "+16505550001", "+16505550002"
            for number in (rating, question):
                key = conversation_key("sms", number)
                await resolved_by_an_agent(gw, key, customer=number)
            asks = [m for m in twilio.messages if "from 1 to 5" in m["Body"]]
            assert {m["To"] for m in asks} == {rating, question}
            assert asks[0]["Body"] == f"{QUESTION}\nJust reply with a number from 1 to 5."

            await _sms(gw, question, "3 kettles broke")
            await _sms(gw, rating, " 3 ")
            await _sms(gw, rating, "3")  # the ask is answered: this "3" is a new message
            results = await gw.traffic.settled()

            asked, rated, again = results[-3:]
            assert rated.decision.explanation.startswith("A satisfaction rating (3 of 5)")
            assert rated.replies == (THANKS,)
            assert asked.decision.action.value in ("answer", "escalate")
            assert again.replies != (THANKS,)
            assert await score_of(gw, conversation_key("sms", rating)) == 3
            assert await score_of(gw, conversation_key("sms", question)) is None
            assert await ratings(gw, 1) == 1
            assert THANKS in [m["Body"] for m in twilio.messages if m["To"] == rating]


async def _sms(gw: Handoff, number: str, text: str) -> None:
    params = {
        "MessageSid": f"SM{abs(hash((number, text, len(gw.traffic.published)))):032x}"[:34],
        "From": number,
        "To": SMS_NUMBER,
        "Body": text,
    }
    path = "/twilio/sms"
    signature = sign(PUBLIC_URL + path, params)
    response = await gw.http.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status == 200, await response.text()
    # One at a time: each message is the conversation's next.
    await gw.traffic.settled()


# -- email: a signed one-click link ------------------------------------------------------------


async def test_an_email_rating_link_records_once_and_a_tampered_one_is_refused(
    tmp_path: Path,
    smtp_sink: tuple[Sink, int],  # noqa: F811  (the fixture, imported)
) -> None:
    handler, port = smtp_sink
    section = {
        "enabled": True,
        "from_address": SUPPORT,
        "smtp": {"host": "127.0.0.1", "port": port, "tls": "none"},
        "public_url": "https://support.example.com",
    }
    async with (
        FakeSlack(users={DANA: DANA_NAME}) as slack,
        open_gateway(config(tmp_path, slack, {"email": section}), slack) as gw,
    ):
        key = conversation_key("email", "ann@customer.example", "<root-1@customer.example>")
        await resolved_by_an_agent(gw, key, customer="ann@customer.example")
        mails = await handler.wait_for(2)  # "Dana marked this as solved", then the ask
        body = mails[-1].get_content()
        assert QUESTION in body
        links = [line.split(": ", 1)[1] for line in body.splitlines() if RATING_PATH in line]
        assert len(links) == 5 and all(
            link.startswith("https://support.example.com") for link in links
        )
        five = urlsplit(links[4])
        path = f"{five.path}?{five.query}"

        tampered = [path.replace("s=5", "s=1"), path[:-4] + "beef", f"{five.path}?s=5"]
        for forged in tampered:
            assert (await gw.http.get(forged)).status == 403
        page = await gw.http.get(path)
        assert page.status == 200 and THANKS in await page.text()
        again = await gw.http.get(path)  # a second click, or a mail scanner's
        assert again.status == 200

        assert await ratings(gw, 1) == 1
        assert await score_of(gw, key) == 5
        assert len(handler.mails) == 2  # the page thanked; no thank-you mail


# -- after a bot answer, never in a hand-off, once per conversation ------------------------------


@pytest.fixture(params=["memory", "redis"])
async def backend_url(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str | None:
    return await backend(request, monkeypatch)


async def test_a_bot_answer_met_with_silence_is_asked_about_once_and_never_in_a_hand_off(
    backend_url: str | None,
    tmp_path: Path,
    sample_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    async with FakeSlack(users={DANA: DANA_NAME}) as slack:
        cfg = config(tmp_path, slack, redis_url=backend_url, data_dir=sample_data_dir, bot_idle=0.3)
        async with open_gateway(cfg, slack, timers=True) as gw:
            # An answered question, then silence: asked once.
            answer = await gw.ask("lena", "How much is the Duo plan in the UK?")
            assert answer["decision"]["action"] == "answer"
            key = conversation_key("rest", "lena")
            await until(lambda: _asked(gw, key))
            transcript = await gw.runtime.store.transcript(key)
            assert transcript[-1].text == f"{QUESTION}\nJust reply with a number from 1 to 5."
            rated = await gw.ask("lena", "5")
            assert rated["replies"][0]["text"] == THANKS
            await gw.ask("lena", "Can I pause my subscription?")
            await asyncio.sleep(0.6)  # past another bot_idle: no second ask
            assert await _asks(gw, key) == 1

            # Answered, then escalated before the silence ran out: no ask while waiting.
            assert (await gw.ask("ben", "Can I pause my subscription?"))["replies"]
            escalated = await gw.ask("ben", "I want to talk to a person please")
            assert escalated["decision"]["action"] == "escalate"
            ben = conversation_key("rest", "ben")
            await asyncio.sleep(0.6)
            assert await _asks(gw, ben) == 0
            assert (await gw.conversation(ben)).mode is Mode.WAITING
            await gw.publish(agent_event(InboundKind.CLAIM, ben, DANA, DANA_NAME))
            await gw.ask("ben", "4")  # to the agent, while she has it: not a rating
            assert await _asks(gw, ben) == 0
            await gw.publish(agent_event(InboundKind.RESOLVE, ben, DANA, DANA_NAME))
            assert await _asks(gw, ben) == 1
            assert await ratings(gw, 1) == 1


async def _asked(gw: Handoff, key: str) -> bool:
    return await _asks(gw, key) == 1


async def _asks(gw: Handoff, key: str) -> int:
    conversation = await gw.runtime.store.load(key)
    transcript = await gw.runtime.store.transcript(key)
    said = [e for e in transcript if e.role is Role.BOT and "1 (" in e.text and "5 (" in e.text]
    assert conversation is not None
    assert (conversation.satisfaction.ask_id is not None) == bool(said)
    return len(said)


def test_the_ask_after_a_bot_answer_must_come_before_the_archive_assumes_a_resolution() -> None:
    with pytest.raises(ValueError, match="bot_idle must be shorter"):
        GatewayConfig.model_validate(
            {"satisfaction": {"bot_idle": 7200}, "archive": {"resolution_window": 3600}}
        )
    with pytest.raises(ValueError, match="same languages"):
        GatewayConfig.model_validate(
            {"satisfaction": {"messages": {"question": {"en": "?", "fr": "?"}}}}
        )
    assert GatewayConfig().satisfaction.messages.thanks["de"] == "Danke für Ihre Bewertung!"


@pytest.mark.parametrize(
    ("said", "language"),
    [
        (["Mein Paket ist nicht angekommen, was kann ich tun?"], "de"),
        (["My parcel never arrived, what can I do?"], "en"),
        (["hi"], "en"),  # tells nothing: the first language
        ([], "en"),
    ],
)
async def test_the_ask_is_in_the_language_the_customer_wrote(
    said: list[str], language: str
) -> None:
    history = [TranscriptEntry(role=Role.CUSTOMER, text=text) for text in said]
    assert await told_language(history, ["en", "de"]) == language
    assert await told_language(history, ["en", "en-GB"]) == "en"  # a code py3langid lacks
