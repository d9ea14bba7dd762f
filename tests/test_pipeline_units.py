"""The pipeline and the relay on their own: the real brain (offline answerer, sample help
centre) and the memory store and bus, with a recording channel and agents' console in place
of the providers, so each test reads exactly what the customer and the agents were sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from brain.config import BrainConfig
from brain.knowledge import KnowledgeBase
from brain.offline import OfflineAnswerer
from brain.policy import PolicyGuard
from gateway.bus.memory import MemoryBus
from gateway.config import HandoffConfig
from gateway.message import Action, Inbound, InboundKind, Mode, Reason, Role
from gateway.pipeline import Pipeline, ReplyTexts
from gateway.relay import Relay
from gateway.results import TurnResults
from gateway.store.memory import MemoryStore
from tests.fakes.recording import RecordingChannel, RecordingConsole

KEY = "rest:ann"
TEXTS = ReplyTexts(
    error="Something broke.", holding="Can't say.", no_agents="Email us.", wait="One moment."
)


@dataclass
class Parts:
    pipeline: Pipeline
    store: MemoryStore
    channel: RecordingChannel
    console: RecordingConsole


@pytest.fixture(scope="module")
def knowledge(sample_data_dir: Path) -> Iterator[KnowledgeBase]:
    kb = KnowledgeBase(sample_data_dir)
    kb.warm_up()
    yield kb
    kb.close()


@pytest.fixture
async def parts(knowledge: KnowledgeBase) -> AsyncIterator[Parts]:
    bus = MemoryBus(max_concurrency=4)
    store = MemoryStore(dedupe_ttl=86_400, conversation_ttl=3_600)
    channel, console = RecordingChannel(), RecordingConsole()
    channels = {"rest": channel}
    config = BrainConfig()
    relay = Relay(
        console=console,
        store=store,
        bus=bus,
        channels=channels,
        config=HandoffConfig(escalation_channel="C0AGENTS"),
    )
    pipeline = Pipeline(
        store=store,
        answerer=OfflineAnswerer(knowledge, config),
        policy=PolicyGuard(config.policy),
        channels=channels,
        results=TurnResults(bus),
        texts=TEXTS,
        first_response=config.deadline - config.reserve,
        relay=relay,
    )
    yield Parts(pipeline, store, channel, console)
    await bus.close()


def customer(text: str, provider_id: str) -> Inbound:
    return Inbound(
        channel="rest", conversation=KEY, sender="ann", text=text, provider_message_id=provider_id
    )


def agent(kind: InboundKind, provider_id: str, text: str = "") -> Inbound:
    return Inbound(
        kind=kind,
        channel="rest",
        conversation=KEY,
        sender="U0DANA",
        author="Dana",
        text=text,
        provider_message_id=provider_id,
    )


async def test_an_answer_goes_out_split_to_the_channels_limit_and_is_recorded_whole(
    parts: Parts,
) -> None:
    result = await parts.pipeline.handle(customer("How much is the Duo plan in the UK?", "m1"))
    assert result.decision.action is Action.ANSWER
    assert len(parts.channel.sent) > 1 and all(len(t) <= 40 for t in parts.channel.texts)
    assert {outbound.in_reply_to for outbound in parts.channel.sent} == {result.message_id}
    assert parts.channel.typing_in == [KEY]
    entries = await parts.store.transcript(KEY)
    assert [entry.role for entry in entries] == [Role.CUSTOMER, Role.BOT]
    assert " ".join(entries[1].text.split()) == " ".join(" ".join(parts.channel.texts).split())


async def test_a_failed_send_is_noted_in_the_transcript_and_not_recorded_as_said(
    parts: Parts,
) -> None:
    parts.channel.failing = ConnectionResetError("provider hung up")
    result = await parts.pipeline.handle(customer("How much is the Duo plan in the UK?", "m2"))
    assert result.replies == ()
    entries = await parts.store.transcript(KEY)
    assert [entry.role for entry in entries] == [Role.CUSTOMER, Role.SYSTEM]
    assert entries[1].text == "Delivery to the customer failed: ConnectionResetError"
    assert entries[1].in_reply_to == result.message_id


async def test_an_escalation_opens_a_thread_and_an_agents_reply_reaches_the_customer_signed(
    parts: Parts,
) -> None:
    result = await parts.pipeline.handle(customer("I want to talk to a person", "m3"))
    assert result.decision.reason is Reason.HUMAN_REQUESTED
    [(thread, card)] = parts.console.cards.items()
    assert card.reason is Reason.HUMAN_REQUESTED and card.customer == "ann"
    assert [entry.role for entry in parts.console.transcripts[thread]] == [Role.CUSTOMER]
    said = [entry.text for entry in await parts.store.transcript(KEY) if entry.role is Role.BOT]
    assert "A person from our team will join you here" in said[-1]

    await parts.pipeline.handle(agent(InboundKind.AGENT_REPLY, "a1", "Hi Ann, Dana here."))
    conversation = await parts.store.load(KEY)
    assert conversation is not None and conversation.mode is Mode.HUMAN
    assert parts.channel.sent[-1].text == "Dana: Hi Ann, Dana here."
    assert parts.channel.sent[-1].role is Role.AGENT
    assert parts.console.cards[thread].agent == "Dana"

    await parts.pipeline.handle(customer("Thanks! One more thing", "m4"))
    assert parts.console.lines[thread][-1] == "ann: Thanks! One more thing"
    assert parts.channel.sent[-1].text == "Dana: Hi Ann, Dana here."  # the bot stayed silent


async def test_an_undeliverable_agent_reply_is_told_to_the_agents(parts: Parts) -> None:
    await parts.pipeline.handle(customer("I want to talk to a person", "m5"))
    parts.channel.failing = ConnectionResetError("provider hung up")
    await parts.pipeline.handle(agent(InboundKind.AGENT_REPLY, "a2", "Are you there?"))
    [lines] = parts.console.lines.values()
    assert lines[-1] == (
        "Delivery to the customer failed: ConnectionResetError. They did not get: "
        "Dana: Are you there?"
    )
