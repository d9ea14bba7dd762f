"""Telegram: a real aiogram Bot against the local fake Bot API, through the whole gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.telegram import SECRET_HEADER, WEBHOOK_PATH, TelegramChannel, TelegramConfig
from gateway.app.http import build_app
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.message import Outbound, conversation_key
from tests.fakes import agent_reply, stored_conversation, until
from tests.fakes.telegram_api import (
    BOT_ID,
    BOT_USERNAME,
    SECRET,
    TOKEN,
    FakeTelegram,
    group_message,
    private_message,
)
from tests.harness import Gateway

PRICE_QUESTION = "How much is the Duo plan in the UK?"


@dataclass(kw_only=True)
class TelegramGateway(Gateway):
    telegram: FakeTelegram

    @property
    def adapter(self) -> TelegramChannel:
        return self.channel(TelegramChannel)

    async def deliver(self, update: dict[str, Any], *, secret: str | None = SECRET) -> int:
        headers = {SECRET_HEADER: secret} if secret is not None else {}
        response = await self.http.post(WEBHOOK_PATH, json=update, headers=headers)
        return response.status


def telegram_config(data_dir: Path, api_url: str, **telegram: Any) -> GatewayConfig:
    settings = {
        "enabled": True,
        "bot_token": TOKEN,
        "webhook_secret": SECRET,
        "api_url": api_url,
        **telegram,
    }
    return GatewayConfig(
        data_dir=data_dir, channels={"telegram": TelegramConfig.model_validate(settings)}
    )


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def tg(
    telegram: FakeTelegram, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TelegramGateway]:
    """The gateway (web and worker roles, in-process bus) with Telegram in webhook mode."""
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    config = telegram_config(sample_data_dir, telegram.url)
    async with TelegramGateway.open(config, telegram=telegram) as gateway:
        yield gateway


async def test_webhook_update_is_answered_in_the_same_chat(tg: TelegramGateway) -> None:
    assert await tg.deliver(private_message(1, PRICE_QUESTION)) == 200

    await until(lambda: len(tg.telegram.sent()) == 1)
    reply = tg.telegram.sent()[0]
    assert reply["chat_id"] == "4242"
    assert reply["parse_mode"] == "HTML"
    transcript = await tg.runtime.store.transcript(conversation_key("telegram", "4242"))
    assert [entry.role.value for entry in transcript] == ["customer", "bot"]
    assert reply["text"] and reply["text"].split()[0] in transcript[1].text
    assert tg.telegram.sent("sendChatAction") == [{"chat_id": "4242", "action": "typing"}]


async def test_redelivery_handled_by_another_worker_gets_one_answer(
    telegram: FakeTelegram, sample_data_dir: Path, redis: Redis, redis_url: str
) -> None:
    """With Redis and two workers, the redelivered update may land on either: one answer.
    (The `redis` fixture empties the database first.)"""
    config = telegram_config(sample_data_dir, telegram.url).model_copy(
        update={"redis_url": redis_url}
    )
    update = private_message(30, PRICE_QUESTION)
    async with (
        TelegramGateway.open(config, telegram=telegram) as web_and_worker,
        Gateway.open(config),  # a second worker on the same Redis
    ):
        for _ in range(2):
            assert await web_and_worker.deliver(update) == 200
        await web_and_worker.traffic.settled()  # both deliveries processed, on either worker
    assert len(telegram.sent()) == 1


async def test_redelivered_update_gets_one_answer(tg: TelegramGateway) -> None:
    traffic = tg.traffic
    update = private_message(2, PRICE_QUESTION)
    assert await tg.deliver(update) == 200
    assert await tg.deliver(update) == 200  # Telegram's redelivery: same update_id

    await traffic.settled()  # both deliveries processed: a second answer would be out
    assert len(tg.telegram.sent()) == 1
    transcript = await tg.runtime.store.transcript(conversation_key("telegram", "4242"))
    assert [entry.role.value for entry in transcript] == ["customer", "bot"]


@pytest.mark.parametrize("secret", ["wrong-secret", None, ""])
async def test_webhook_without_the_right_secret_is_refused(
    tg: TelegramGateway, secret: str | None
) -> None:
    traffic = tg.traffic
    assert await tg.deliver(private_message(3, PRICE_QUESTION), secret=secret) == 401
    assert traffic.published == []  # refused before the bus, so nothing can be answered
    assert tg.telegram.calls == []


async def test_malformed_webhook_body_is_a_400(tg: TelegramGateway) -> None:
    headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
    not_json = await tg.http.post(WEBHOOK_PATH, data=b"{not json", headers=headers)
    not_an_update = await tg.http.post(WEBHOOK_PATH, json={"message": "hi"}, headers=headers)
    assert (not_json.status, not_an_update.status) == (400, 400)
    assert "not valid JSON" in await not_json.text()


async def test_a_5000_character_answer_goes_out_as_two_messages(tg: TelegramGateway) -> None:
    answer = " ".join(f"Sentence {n} about the Duo plan." for n in range(200))[:5000]
    key = conversation_key("telegram", "4242")
    for part in tg.adapter.split(answer):  # as the pipeline and the relay do
        await tg.adapter.send(Outbound(channel="telegram", conversation=key, text=part))

    sent = tg.telegram.sent()
    assert len(sent) == 2
    assert all(len(message["text"]) <= 4096 for message in sent)
    assert " ".join(message["text"] for message in sent) == answer


async def test_flood_control_is_retried_after_retry_after(tg: TelegramGateway) -> None:
    tg.telegram.flood("sendMessage", retry_after=1)
    key = conversation_key("telegram", "4242")
    await tg.adapter.send(Outbound(channel="telegram", conversation=key, text="Hello"))

    first, second = (call for call in tg.telegram.calls if call.method == "sendMessage")
    assert first.params["failed"] == 429
    assert second.at - first.at >= 1.0
    assert tg.telegram.sent()[0]["text"] == "Hello"


async def test_rejected_formatting_is_resent_as_plain_text(tg: TelegramGateway) -> None:
    tg.telegram.reject("sendMessage", "Bad Request: can't parse entities: Unsupported start tag")
    key = conversation_key("telegram", "4242")
    text = "The **Duo** plan costs £12 <per month> & ships weekly."
    await tg.adapter.send(Outbound(channel="telegram", conversation=key, text=text))

    rejected, resent = (call.params for call in tg.telegram.calls)
    assert rejected["parse_mode"] == "HTML"
    assert rejected["text"] == "The <b>Duo</b> plan costs £12 &lt;per month&gt; &amp; ships weekly."
    assert "parse_mode" not in resent
    assert resent["text"] == text


async def test_photo_with_caption_becomes_a_note(tg: TelegramGateway) -> None:
    photo = [
        {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90},
        {"file_id": "large", "file_unique_id": "l", "width": 1280, "height": 960, "file_size": 9},
    ]
    update = private_message(5, "", photo=photo, caption="My grinder arrived broken")
    assert await tg.deliver(update) == 200

    key = conversation_key("telegram", "4242")
    await until(lambda: len(tg.telegram.sent()) == 1)
    first = (await tg.runtime.store.transcript(key))[0]
    assert first.text == "My grinder arrived broken\n[image attached: photo]"


async def test_group_message_without_mention_is_ignored(tg: TelegramGateway) -> None:
    assert await tg.deliver(group_message(6, PRICE_QUESTION, user_id=77)) == 200
    assert await tg.deliver(private_message(7, PRICE_QUESTION)) == 200

    await until(lambda: len(tg.telegram.sent()) == 1)
    assert tg.telegram.sent()[0]["chat_id"] == "4242"
    assert await tg.runtime.store.load(conversation_key("telegram", "-1001234", "77")) is None


async def test_group_mention_is_answered_as_a_reply(tg: TelegramGateway) -> None:
    text = f"@{BOT_USERNAME} {PRICE_QUESTION}"
    mention = {"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}
    update = group_message(8, text, user_id=77, entities=[mention])
    assert await tg.deliver(update) == 200

    await until(lambda: len(tg.telegram.sent()) == 1)
    reply = tg.telegram.sent()[0]
    assert reply["chat_id"] == "-1001234"
    assert reply["reply_parameters"]["message_id"] == update["message"]["message_id"]
    key = conversation_key("telegram", "-1001234", "77")
    assert (await tg.runtime.store.transcript(key))[0].text == PRICE_QUESTION  # mention dropped


async def test_group_reply_to_the_bot_is_answered(tg: TelegramGateway) -> None:
    bot_message = {
        "message_id": 1,
        "date": 0,
        "chat": {"id": -1001234, "type": "supergroup", "title": "fans"},
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Kettle & Crane"},
        "text": "Anything else?",
    }
    update = group_message(9, PRICE_QUESTION, user_id=78, reply_to_message=bot_message)
    assert await tg.deliver(update) == 200
    await until(lambda: len(tg.telegram.sent()) == 1)
    assert tg.telegram.sent()[0]["chat_id"] == "-1001234"


async def test_agent_reply_reaches_the_telegram_customer(tg: TelegramGateway) -> None:
    """An agent's reply relayed later is addressed from the stored conversation alone."""
    mention = {"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}
    update = group_message(10, f"@{BOT_USERNAME} {PRICE_QUESTION}", entities=[mention])
    await tg.deliver(update)
    await until(lambda: len(tg.telegram.sent()) == 1)

    key = conversation_key("telegram", "-1001234", "77")
    conversation = await stored_conversation(tg.runtime.store, key)
    await tg.adapter.send(agent_reply(conversation, "I've refunded the Duo plan for you."))
    relayed = tg.telegram.sent()[-1]
    assert relayed["chat_id"] == "-1001234"
    assert relayed["text"] == "Dana: I've refunded the Duo plan for you."
    assert relayed["reply_parameters"]["message_id"] == update["message"]["message_id"]


async def test_polling_mode_answers_updates_from_get_updates(
    telegram: FakeTelegram, sample_data_dir: Path
) -> None:
    config = telegram_config(sample_data_dir, telegram.url, mode="polling", webhook_secret=None)
    async with Runtime.open(config) as runtime:
        assert build_app(runtime).router.resources()  # health routes only: no webhook route
        assert all(WEBHOOK_PATH not in str(r) for r in build_app(runtime).router.resources())
        consumer = asyncio.create_task(runtime.bus.consume(runtime.pipeline.handle))
        adapter = runtime.channels["telegram"]
        await adapter.start()
        try:
            await telegram.push_update(private_message(20, PRICE_QUESTION, chat_id=99))
            await until(lambda: len(telegram.sent()) == 1)
            await telegram.push_update(
                private_message(21, "Can I pause my subscription?", chat_id=99)
            )
            await until(lambda: len(telegram.sent()) == 2)
        finally:
            await adapter.stop()
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    assert telegram.webhook_deleted
    assert [message["chat_id"] for message in telegram.sent()] == ["99", "99"]
    offsets = [call.params.get("offset") for call in telegram.calls if call.method == "getUpdates"]
    assert offsets[:3] == [None, "21", "22"]


async def test_webhook_mode_never_polls(telegram: FakeTelegram, sample_data_dir: Path) -> None:
    async with Runtime.open(telegram_config(sample_data_dir, telegram.url)) as runtime:
        await runtime.channels["telegram"].start()
        # Polling is the adapter's only background work: in webhook mode it never starts.
        assert "telegram-polling" not in {task.get_name() for task in asyncio.all_tasks()}
        await runtime.channels["telegram"].stop()
    assert telegram.calls == []


def test_webhook_mode_requires_a_secret() -> None:
    with pytest.raises(ValueError, match="webhook_secret is required"):
        TelegramConfig(enabled=True, bot_token=TOKEN, webhook_secret=None)
