"""Discord: discord.py's gateway client and HTTP client against the local fake Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.discord_channel import DiscordChannel, DiscordConfig, MessageContentIntentMissing
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.message import Outbound, conversation_key
from tests.fakes import agent_reply, stored_conversation, until
from tests.fakes.discord_api import (
    BOT_ID,
    CUSTOMER_ID,
    DM_CHANNEL_ID,
    GUILD_CHANNEL_ID,
    GUILD_ID,
    THREAD_ID,
    TOKEN,
    FakeDiscord,
    bot_mention,
    message_create,
)
from tests.harness import Gateway

PRICE_QUESTION = "How much is the Duo plan in the UK?"


def discord_config(data_dir: Path, api_url: str, **discord: Any) -> GatewayConfig:
    settings = {"enabled": True, "bot_token": TOKEN, "api_url": api_url, **discord}
    return GatewayConfig(
        data_dir=data_dir, channels={"discord": DiscordConfig.model_validate(settings)}
    )


@dataclass(kw_only=True)
class DiscordGateway(Gateway):
    fake: FakeDiscord

    @property
    def adapter(self) -> DiscordChannel:
        return self.channel(DiscordChannel)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@asynccontextmanager
async def connected(
    fake: FakeDiscord, data_dir: Path, **discord: Any
) -> AsyncIterator[DiscordGateway]:
    """Worker role plus the Discord gateway connection (connectors role), in-process bus."""
    config = discord_config(data_dir, fake.api_url, **discord)
    async with DiscordGateway.open(config, fake=fake) as gateway:
        await gateway.adapter.start()
        try:
            yield gateway
        finally:
            await gateway.adapter.stop()


@pytest.fixture
async def dc(fake: FakeDiscord, sample_data_dir: Path) -> AsyncIterator[DiscordGateway]:
    async with connected(fake, sample_data_dir) as gateway:
        yield gateway


async def test_dm_is_answered_in_the_dm(dc: DiscordGateway) -> None:
    await dc.fake.dispatch("MESSAGE_CREATE", message_create(PRICE_QUESTION))

    await until(lambda: len(dc.fake.messages(DM_CHANNEL_ID)) == 1)
    reply = dc.fake.messages(DM_CHANNEL_ID)[0]
    assert reply["content"]
    assert "message_reference" not in reply  # a DM is answered plainly, not quoted
    assert reply["allowed_mentions"]["parse"] == []  # never @everyone on a customer's behalf
    assert dc.fake.typed(DM_CHANNEL_ID) == 1
    identify = dc.fake.identifies[0]
    assert identify["intents"] & (1 << 15)  # the message-content intent was requested


async def test_guild_message_without_mention_is_ignored(dc: DiscordGateway) -> None:
    traffic = dc.traffic
    plain = message_create(PRICE_QUESTION, channel_id=GUILD_CHANNEL_ID, guild_id=GUILD_ID)
    await dc.fake.dispatch("MESSAGE_CREATE", plain)
    await dc.fake.dispatch("MESSAGE_CREATE", message_create(PRICE_QUESTION))

    await until(lambda: len(dc.fake.messages(DM_CHANNEL_ID)) == 1)
    # Events are handled in the order dispatched, each decided as it is read: once the DM is
    # answered the guild message was turned away (or it would be on the bus before the DM).
    await traffic.settled()
    assert [message.conversation for message in traffic.published] == [
        conversation_key("discord", DM_CHANNEL_ID)
    ]
    assert dc.fake.messages(GUILD_CHANNEL_ID) == []
    key = conversation_key("discord", GUILD_CHANNEL_ID, CUSTOMER_ID)
    assert await dc.runtime.store.load(key) is None


@pytest.mark.parametrize("channel_id", [GUILD_CHANNEL_ID, THREAD_ID])
async def test_mention_is_answered_as_a_reply_to_the_message(
    dc: DiscordGateway, channel_id: str
) -> None:
    event = message_create(
        f"<@{BOT_ID}> {PRICE_QUESTION}",
        channel_id=channel_id,
        guild_id=GUILD_ID,
        mentions=[bot_mention()],
    )
    await dc.fake.dispatch("MESSAGE_CREATE", event)

    await until(lambda: len(dc.fake.messages(channel_id)) == 1)
    reference = dc.fake.messages(channel_id)[0]["message_reference"]
    assert reference["message_id"] == event["id"]
    assert str(reference["channel_id"]) == channel_id
    key = conversation_key("discord", channel_id, CUSTOMER_ID)
    assert (await dc.runtime.store.transcript(key))[0].text == PRICE_QUESTION  # mention dropped


async def test_attachments_become_notes(dc: DiscordGateway) -> None:
    attachment = {
        "id": "700000000000000001",
        "filename": "receipt.pdf",
        "size": 2048,
        "url": "https://cdn.discordapp.com/attachments/1/2/receipt.pdf",
        "proxy_url": "https://media.discordapp.net/attachments/1/2/receipt.pdf",
        "content_type": "application/pdf",
    }
    await dc.fake.dispatch(
        "MESSAGE_CREATE", message_create("Here is my receipt", attachments=[attachment])
    )
    await until(lambda: len(dc.fake.messages(DM_CHANNEL_ID)) == 1)
    transcript = await dc.runtime.store.transcript(conversation_key("discord", DM_CHANNEL_ID))
    assert transcript[0].text == "Here is my receipt\n[document attached: receipt.pdf]"


async def test_silent_gateway_is_reconnected_by_the_watchdog(
    fake: FakeDiscord, sample_data_dir: Path
) -> None:
    async with connected(fake, sample_data_dir, watchdog_seconds=1.0):
        await until(lambda: len(fake.resumes) >= 1, within=5)
        assert fake.resumes[0]["session_id"] == "fake-session"
        assert len(fake.identifies) == 1  # resumed, not a new session
        # The resumed connection still delivers messages.
        await fake.dispatch("MESSAGE_CREATE", message_create(PRICE_QUESTION))
        await until(lambda: len(fake.messages(DM_CHANNEL_ID)) == 1)


async def test_missing_message_content_intent_is_a_precise_startup_error(
    fake: FakeDiscord, sample_data_dir: Path
) -> None:
    fake.refuse_intents = True
    async with Runtime.open(discord_config(sample_data_dir, fake.api_url)) as runtime:
        with pytest.raises(MessageContentIntentMissing) as raised:
            await runtime.channels["discord"].start()
    message = str(raised.value)
    assert "4014" in message
    assert "Developer Portal" in message
    assert "Message Content Intent" in message


async def rest_only(fake: FakeDiscord, data_dir: Path) -> AsyncIterator[DiscordChannel]:
    async with Runtime.open(discord_config(data_dir, fake.api_url)) as runtime:
        adapter = runtime.channels["discord"]
        assert isinstance(adapter, DiscordChannel)
        yield adapter


async def test_a_2500_character_answer_goes_out_as_two_messages(
    fake: FakeDiscord, sample_data_dir: Path
) -> None:
    """Sending needs no gateway connection: the worker uses discord.py's HTTP client alone."""
    answer = " ".join(f"Sentence {n} about the Duo plan." for n in range(100))[:2500]
    key = conversation_key("discord", DM_CHANNEL_ID)
    async for adapter in rest_only(fake, sample_data_dir):
        for part in adapter.split(answer):  # as the pipeline and the relay do
            await adapter.send(Outbound(channel="discord", conversation=key, text=part))
        await adapter.typing(key)

    sent = fake.messages(DM_CHANNEL_ID)
    assert len(sent) == 2
    assert all(len(message["content"]) <= 2000 for message in sent)
    assert " ".join(message["content"] for message in sent) == answer
    assert fake.typed(DM_CHANNEL_ID) == 1
    assert all(call.authorization == f"Bot {TOKEN}" for call in fake.calls)


async def test_agent_reply_reaches_the_discord_customer(dc: DiscordGateway) -> None:
    """An agent's reply relayed later is addressed from the stored conversation alone."""
    event = message_create(
        f"<@{BOT_ID}> {PRICE_QUESTION}",
        channel_id=GUILD_CHANNEL_ID,
        guild_id=GUILD_ID,
        mentions=[bot_mention()],
    )
    await dc.fake.dispatch("MESSAGE_CREATE", event)
    await until(lambda: len(dc.fake.messages(GUILD_CHANNEL_ID)) == 1)

    key = conversation_key("discord", GUILD_CHANNEL_ID, CUSTOMER_ID)
    conversation = await stored_conversation(dc.runtime.store, key)
    await dc.adapter.send(agent_reply(conversation, "I've refunded the Duo plan for you."))
    relayed = dc.fake.messages(GUILD_CHANNEL_ID)[-1]
    assert relayed["content"] == "Dana: I've refunded the Duo plan for you."
    assert relayed["message_reference"]["message_id"] == event["id"]


async def test_a_repeated_reply_part_carries_the_same_nonce(
    fake: FakeDiscord, sample_data_dir: Path
) -> None:
    """Discord drops a repeated nonce (enforce_nonce), so a re-run never posts twice."""
    key = conversation_key("discord", DM_CHANNEL_ID)
    reply = Outbound(channel="discord", conversation=key, text="Hello", in_reply_to="m1")
    async for adapter in rest_only(fake, sample_data_dir):
        await adapter.send(reply)
        await adapter.send(reply)
        await adapter.send(reply.model_copy(update={"text": "Bye"}))
    first, again, other = fake.messages(DM_CHANNEL_ID)
    assert first["enforce_nonce"] is True
    assert first["nonce"] == again["nonce"] != other["nonce"]
