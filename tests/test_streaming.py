"""Claude's answer streamed to the customer: the real `anthropic` client against the local
Messages API fake at a paced stream, the real slack_sdk, aiogram and discord.py against their
fakes, the web chat over its websocket.

The reply below takes about 6 s to generate whole (15 tokens/s), so only a streamed first
sentence can reach the customer before the first-response deadline. That deadline is 4 s
here, not the default 2 s: the tests run on a shared two-core machine at a load of 10-20,
where retrieval alone takes 1.5 s (benchmarks/answer_latency.py measures the real figures).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from pydantic import SecretStr

from adapters.discord_channel import DiscordConfig
from adapters.slack import SlackConfig
from adapters.telegram import SECRET_HEADER, WEBHOOK_PATH, TelegramConfig
from brain.config import BrainConfig
from gateway.app.settings import GatewayConfig
from gateway.message import Inbound, Role, TranscriptEntry, conversation_key
from tests.fakes import until
from tests.fakes.anthropic_api import API_KEY, FakeAnthropic, Stall, decision
from tests.fakes.discord_api import DM_CHANNEL_ID, FakeDiscord
from tests.fakes.discord_api import TOKEN as DISCORD_TOKEN
from tests.fakes.slack_api import (
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    message_event,
    signed_event,
)
from tests.fakes.telegram_api import SECRET as TELEGRAM_SECRET
from tests.fakes.telegram_api import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram_api import FakeTelegram, private_message
from tests.harness import Gateway

DEADLINE = 4.0  # brain.deadline: the first response
MARGIN = 0.5  # scheduling slack on a loaded machine
QUESTION = "Can I pause my subscription?"
FIRST = "Yes, you can pause your subscription for up to three months at a time."
REPLY = (
    f"{FIRST} Open Account, then Subscriptions, and choose Pause; the pause starts with "
    "your next delivery. Deliveries you skip while it is paused are never charged, and you "
    "can resume whenever you like from the same page, or simply wait for the pause to end "
    "by itself. If you change your mind, you can also skip a single delivery instead."
)
PACE = {"first_token": 0.3, "tokens_per_second": 15.0}
STALL = DEADLINE + 0.6  # a first token this late misses the first-response deadline


@dataclass(kw_only=True)
class StreamingGateway(Gateway):
    claude: FakeAnthropic
    slack: FakeSlack
    telegram: FakeTelegram
    discord: FakeDiscord

    @property
    def messages(self) -> Any:
        return self.runtime.config.brain.messages


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeAnthropic, FakeSlack, FakeTelegram, FakeDiscord]]:
    async with (
        FakeAnthropic() as claude,
        FakeSlack() as slack,
        FakeTelegram() as telegram,
        FakeDiscord() as discord,
    ):
        yield claude, slack, telegram, discord


async def open_gateway(
    fakes: tuple[FakeAnthropic, FakeSlack, FakeTelegram, FakeDiscord],
    data_dir: Path,
    **brain: Any,
) -> AsyncIterator[StreamingGateway]:
    claude, slack, telegram, discord = fakes
    channels = {
        "slack": SlackConfig(
            enabled=True,
            bot_token=SecretStr(BOT_TOKEN),
            signing_secret=SecretStr(SIGNING_SECRET),
            api_url=slack.base_url,
        ),
        "telegram": TelegramConfig(
            enabled=True,
            bot_token=SecretStr(TELEGRAM_TOKEN),
            webhook_secret=SecretStr(TELEGRAM_SECRET),
            api_url=telegram.url,
        ),
        "discord": DiscordConfig(
            enabled=True, bot_token=SecretStr(DISCORD_TOKEN), api_url=discord.api_url
        ),
    }
    config = GatewayConfig(
        data_dir=data_dir,
        redis_url=None,
        channels=channels,
        brain=BrainConfig(
            anthropic_api_key=SecretStr(API_KEY),
            anthropic_base_url=claude.url,
            **{"deadline": DEADLINE, "answer_deadline": 10.0, **brain},
        ),
    )
    async with StreamingGateway.open(
        config,
        embedded=True,
        claude=claude,
        slack=slack,
        telegram=telegram,
        discord=discord,
    ) as gateway:
        yield gateway


@pytest.fixture
async def gw(fakes: Any, sample_data_dir: Path) -> AsyncIterator[StreamingGateway]:
    async for gateway in open_gateway(fakes, sample_data_dir):
        yield gateway


async def frames_until_reply(
    socket: ClientWebSocketResponse, started: float
) -> list[tuple[float, dict[str, Any]]]:
    """The socket's frames with the seconds since `started`, through the final `reply` of
    a stream (or a plain reply); `history` frames (a bus resync) are left out."""
    frames = []
    while True:
        frame = await socket.receive_json(timeout=20)
        if frame["type"] == "history":
            continue
        frames.append((time.monotonic() - started, frame))
        if frame["type"] == "reply" and "stream_id" in frame:
            return frames


async def ask_webchat(gw: StreamingGateway, text: str) -> tuple[str, list[tuple[float, Any]]]:
    async with gw.http.ws_connect("/webchat/ws") as socket:
        hello = await socket.receive_json(timeout=5)
        started = time.monotonic()
        await socket.send_json({"type": "message", "text": text, "client_id": "c1"})
        frames = await frames_until_reply(socket, started)
    key = conversation_key("webchat", hello["conversation_id"].partition(".")[0])
    return key, frames


async def transcript_of(gw: StreamingGateway, key: str, entries: int) -> list[TranscriptEntry]:
    async def recorded() -> bool:
        return len(await gw.runtime.store.transcript(key)) >= entries

    await until(recorded)
    return await gw.runtime.store.transcript(key)


async def test_a_long_answer_streams_to_the_web_chat_first_sentence_before_the_deadline(
    gw: StreamingGateway,
) -> None:
    gw.claude.script(decision(reply=REPLY, sources=[1], **PACE))
    key, frames = await ask_webchat(gw, QUESTION)
    kinds = [frame["type"] for _, frame in frames]
    opened = next(i for i, kind in enumerate(kinds) if kind == "stream")
    at, stream = frames[opened]
    assert stream["text"] == FIRST and at < DEADLINE + MARGIN
    grown = stream["text"] + "".join(f["text"] for _, f in frames if f["type"] == "append")
    done_at, final = frames[-1]
    assert kinds.count("append") >= 2 and grown == REPLY == final["text"]
    assert final["stream_id"] == stream["stream_id"] and final["sources"]
    assert done_at > DEADLINE  # the whole answer came later: only streaming made it
    transcript = await transcript_of(gw, key, 2)
    assert [(entry.role, entry.text) for entry in transcript] == [
        (Role.CUSTOMER, QUESTION),
        (Role.BOT, REPLY),
    ]
    answer = transcript[1]
    assert answer.first_response_ms is not None and answer.latency_ms is not None
    assert answer.first_response_ms < (DEADLINE + MARGIN) * 1000
    assert answer.latency_ms > DEADLINE * 1000


async def test_a_long_answer_streams_into_a_slack_thread(gw: StreamingGateway) -> None:
    gw.claude.script(decision(reply=REPLY, **PACE))
    event = message_event(channel="D0CUSTOM1", user="U0CUSTOM1", text=QUESTION)
    body, headers = signed_event(SIGNING_SECRET, event)
    started = time.monotonic()
    assert (await gw.http.post("/slack/events", data=body, headers=headers)).status == 200
    [start] = await gw.slack.wait_for("chat.startStream")
    assert time.monotonic() - started < DEADLINE + MARGIN
    assert start.args["thread_ts"] == event["event"]["ts"]
    assert start.args["chunks"] == [{"type": "markdown_text", "text": FIRST}]
    await gw.slack.wait_for("chat.stopStream", within=10)
    assert time.monotonic() - started > DEADLINE
    assert len(gw.slack.calls_to("chat.appendStream")) >= 2
    [message] = gw.slack.posted("D0CUSTOM1")
    assert message["text"] == REPLY and message["streaming"] is False
    assert gw.slack.calls_to("chat.postMessage") == []  # one message, grown; nothing else
    key = conversation_key("slack", TEAM_ID, "D0CUSTOM1")
    assert [entry.text for entry in await transcript_of(gw, key, 2)] == [QUESTION, REPLY]


async def test_a_long_answer_streams_as_a_telegram_draft_then_one_message(
    gw: StreamingGateway,
) -> None:
    gw.claude.script(decision(reply=REPLY, **PACE))
    started = time.monotonic()
    response = await gw.http.post(
        WEBHOOK_PATH,
        json=private_message(7, QUESTION, chat_id=4242),
        headers={SECRET_HEADER: TELEGRAM_SECRET},
    )
    assert response.status == 200
    await until(lambda: len(gw.telegram.sent("sendMessage")) == 1, within=10)
    drafts = gw.telegram.drafts(4242)
    assert drafts[0]["text"] == FIRST
    first_draft = next(c.at for c in gw.telegram.calls if c.method == "sendMessageDraft")
    assert first_draft - started < DEADLINE + MARGIN
    assert len({draft["draft_id"] for draft in drafts}) == 1 and len(drafts) >= 3
    texts = [draft["text"] for draft in drafts]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    [message] = gw.telegram.sent("sendMessage")
    assert message["text"] == REPLY and int(message["chat_id"]) == 4242


async def test_a_long_answer_streams_to_discord_as_a_post_then_throttled_edits(
    gw: StreamingGateway,
) -> None:
    gw.claude.script(decision(reply=REPLY, **PACE))
    key = conversation_key("discord", DM_CHANNEL_ID)
    started = time.monotonic()
    await gw.runtime.bus.publish(
        Inbound(
            channel="discord",
            conversation=key,
            sender="ada",
            text=QUESTION,
            provider_message_id="d1",
        )
    )
    await until(lambda: len(gw.discord.messages(DM_CHANNEL_ID)) == 1)
    assert time.monotonic() - started < DEADLINE + MARGIN
    [posted] = gw.discord.messages(DM_CHANNEL_ID)
    assert posted["content"] == FIRST
    [message_id] = list(gw.discord.created)
    await until(lambda: gw.discord.created[message_id]["content"] == REPLY, within=10)
    edits = gw.discord.edits(DM_CHANNEL_ID, message_id)
    assert 1 <= len(edits) <= 4 and edits[-1] == REPLY  # throttled: not one edit a sentence
    assert len(gw.discord.messages(DM_CHANNEL_ID)) == 1


async def test_a_model_stalled_past_the_first_deadline_gets_a_holding_line_then_its_answer(
    gw: StreamingGateway,
) -> None:
    gw.claude.script(decision(reply="Yes, for up to three months.", first_token=STALL))
    body = await gw.ask("zoe", QUESTION)
    wait = gw.messages.wait
    assert [reply["text"] for reply in body["replies"]] == [wait, "Yes, for up to three months."]
    assert body["decision"]["action"] == "answer"
    assert body["first_response_ms"] < (DEADLINE + MARGIN) * 1000
    assert body["latency_ms"] > STALL * 1000
    transcript = await gw.runtime.store.transcript("rest:zoe")
    customer, holding, answer = transcript
    assert (holding.text, holding.holding) == (wait, True)
    assert (answer.text, answer.holding) == ("Yes, for up to three months.", False)
    # One turn: both parts answer the same message.
    assert holding.in_reply_to == answer.in_reply_to == customer.message_id
    assert answer.first_response_ms == body["first_response_ms"]


async def test_a_model_stalled_past_the_answer_deadline_falls_back_after_the_holding_line(
    fakes: Any, sample_data_dir: Path
) -> None:
    async for gw in open_gateway(fakes, sample_data_dir, answer_deadline=6.0):
        gw.claude.script(Stall(30))
        started = time.monotonic()
        body = await gw.ask("zoe", QUESTION)
        elapsed = time.monotonic() - started
    replies = [reply["text"] for reply in body["replies"]]
    assert replies[0] == gw.messages.wait and len(replies) == 2
    assert "Claude unavailable (no answer within the deadline)" in body["decision"]["explanation"]
    assert 5.7 < elapsed < 6.0 + 2 * MARGIN


async def test_a_forbidden_phrase_mid_stream_stops_it_replaces_it_and_escalates(
    gw: StreamingGateway,
) -> None:
    forbidden = "Good news: your refund has been approved."
    # About 1,000 characters: the whole stream would take 9 s.
    tail = " ".join(["Meanwhile, keep the parcel somewhere dry until our courier calls."] * 15)
    gw.claude.script(decision(reply=f"{FIRST} {forbidden} {tail}", **PACE))
    key, frames = await ask_webchat(gw, "Where is my refund?")
    kinds = [frame["type"] for _, frame in frames]
    assert kinds.count("stream") == 1 and frames[kinds.index("stream")][1]["text"] == FIRST
    shown = "".join(f["text"] for _, f in frames if f["type"] in ("stream", "append"))
    assert "approved" not in shown and shown == FIRST  # nothing past the violation went out
    done_at, final = frames[-1]
    messages = gw.messages
    assert final["text"] == f"{messages.holding} {messages.no_agents}"  # replaced
    assert done_at < 6.0  # stopped: the whole stream would run about 9 s
    transcript = await transcript_of(gw, key, 2)
    assert [entry.text for entry in transcript] == ["Where is my refund?", final["text"]]
    conversation = await gw.runtime.store.load(key)
    assert conversation is not None and conversation.failed_turns == 0
    [result] = await gw.traffic.settled()
    assert result.decision.reason == "policy_restricted"


async def test_an_answer_the_model_rates_unsure_once_streamed_is_replaced_and_escalated(
    gw: StreamingGateway,
) -> None:
    """The confidence comes after the reply (so the reply streams at once): a streamed answer
    the model then rates below `brain.model_min_confidence` is taken back."""
    unsure = f"{FIRST} Open Account, then Subscriptions."
    gw.claude.script(decision(reply=unsure, confidence=0.2, **PACE))
    key, frames = await ask_webchat(gw, QUESTION)
    kinds = [frame["type"] for _, frame in frames]
    assert kinds.count("stream") == 1 and frames[kinds.index("stream")][1]["text"] == FIRST
    _, final = frames[-1]
    assert final["stream_id"] == frames[kinds.index("stream")][1]["stream_id"]  # replaced
    assert final["text"].startswith(gw.messages.low_confidence) and FIRST not in final["text"]
    transcript = await transcript_of(gw, key, 2)
    assert [entry.text for entry in transcript] == [QUESTION, final["text"]]
    [result] = await gw.traffic.settled()
    assert result.decision.reason == "low_confidence"


async def test_a_message_whose_holding_line_went_out_before_a_crash_is_answered_once(
    gw: StreamingGateway,
) -> None:
    """What a worker that died after the holding line leaves: the customer's message and the
    holding line in the transcript, the message not marked done. The redelivery answers it,
    without a second holding line, however slow the model is again."""
    store = gw.runtime.store
    message = Inbound(
        channel="rest",
        conversation="rest:kim",
        sender="kim",
        text=QUESTION,
        provider_message_id="k1",
    )
    await store.append(
        "rest:kim", TranscriptEntry(role=Role.CUSTOMER, text=QUESTION, message_id=message.id)
    )
    wait = gw.messages.wait
    await store.append(
        "rest:kim",
        TranscriptEntry(role=Role.BOT, text=wait, in_reply_to=message.id, holding=True),
    )
    gw.claude.script(decision(reply="Yes, for up to three months.", first_token=STALL))
    with gw.runtime.results.expect(message.id) as result:
        await gw.runtime.bus.publish(message)
        turn = await asyncio.wait_for(result, 10)
    assert turn.replies == ("Yes, for up to three months.",)
    transcript = await store.transcript("rest:kim")
    assert [(entry.text, entry.holding) for entry in transcript] == [
        (QUESTION, False),
        (wait, True),
        ("Yes, for up to three months.", False),
    ]
    # Redelivered once more: answered, so not sent again.
    again = message.model_copy(update={"provider_message_id": "k1-again"})
    with gw.runtime.results.expect(again.id) as result:
        await gw.runtime.bus.publish(again)
        assert (await asyncio.wait_for(result, 10)).replies == ()


@dataclass(frozen=True)
class Surface:
    """One streaming channel as a crash test sees it: the message, whether its stream has
    opened, and the bot messages the customer ends up with."""

    inbound: Inbound
    opened: Any  # (gw) -> bool
    shown: Any  # (gw) -> list[str]: each bot message's final text


def _surfaces() -> dict[str, Surface]:
    slack_key = conversation_key("slack", TEAM_ID, "D0CUSTOM1")
    discord_key = conversation_key("discord", DM_CHANNEL_ID)
    telegram_key = conversation_key("telegram", "4242")

    def inbound(channel: str, key: str, **fields: Any) -> Inbound:
        return Inbound(
            channel=channel,
            conversation=key,
            sender="ada",
            text=QUESTION,
            provider_message_id=f"{channel}-crash",
            **fields,
        )

    return {
        "slack": Surface(
            inbound("slack", slack_key, thread="1700000000.000100"),
            lambda gw: bool(gw.slack.calls_to("chat.startStream")),
            lambda gw: [m["text"] for m in gw.slack.posted("D0CUSTOM1")],
        ),
        "discord": Surface(
            inbound("discord", discord_key),
            lambda gw: bool(gw.discord.created),
            lambda gw: [m["content"] for m in gw.discord.created.values()],
        ),
        "telegram": Surface(
            inbound("telegram", telegram_key),
            lambda gw: bool(gw.telegram.drafts(4242)),
            lambda gw: [m["text"] for m in gw.telegram.sent("sendMessage")],
        ),
    }


@pytest.mark.parametrize("channel", ["slack", "discord", "telegram"])
async def test_a_worker_that_dies_mid_stream_leaves_one_message_which_the_next_one_ends(
    gw: StreamingGateway, channel: str
) -> None:
    """The worker streaming the answer dies after its first sentence went out (its task is
    cancelled: nothing more is sent, nothing is marked done); the message, delivered again,
    is answered by ending that same message, not by streaming a second one."""
    surface = _surfaces()[channel]
    gw.claude.script(decision(reply=REPLY, **PACE))
    dying = asyncio.create_task(gw.runtime.pipeline.handle(surface.inbound))
    await until(lambda: surface.opened(gw), within=DEADLINE + 2 * MARGIN)
    await asyncio.sleep(0.2)  # the stream's handle is recorded right after it opened
    dying.cancel()
    await asyncio.gather(dying, return_exceptions=True)
    assert not await gw.runtime.store.is_processed(surface.inbound.dedupe_key)

    gw.claude.script(decision(reply="Yes, for up to three months."))
    turn = await gw.runtime.pipeline.handle(surface.inbound)
    assert turn.replies == ("Yes, for up to three months.",)
    assert surface.shown(gw) == ["Yes, for up to three months."]  # one message, ended right
    transcript = await gw.runtime.store.transcript(surface.inbound.conversation)
    assert [(entry.role, entry.text) for entry in transcript] == [
        (Role.CUSTOMER, QUESTION),
        (Role.BOT, "Yes, for up to three months."),
    ]


async def test_a_web_chat_bubble_a_dead_worker_left_growing_is_redrawn_with_the_answer(
    gw: StreamingGateway,
) -> None:
    async with gw.http.ws_connect("/webchat/ws") as socket:
        hello = await socket.receive_json(timeout=5)
        key = conversation_key("webchat", hello["conversation_id"].partition(".")[0])
        message = Inbound(
            channel="webchat",
            conversation=key,
            sender="ada",
            text=QUESTION,
            provider_message_id="w",
        )
        gw.claude.script(decision(reply=REPLY, **PACE))
        dying = asyncio.create_task(gw.runtime.pipeline.handle(message))
        opened = await socket.receive_json(timeout=DEADLINE + 2 * MARGIN)
        while opened["type"] != "stream":
            opened = await socket.receive_json(timeout=DEADLINE)
        await asyncio.sleep(0.2)
        dying.cancel()
        await asyncio.gather(dying, return_exceptions=True)
        gw.claude.script(decision(reply="Yes, for up to three months."))
        await gw.runtime.pipeline.handle(message)
        frame = await socket.receive_json(timeout=5)
        while frame["type"] != "reply":
            assert frame["type"] in ("append", "typing", "history"), frame
            frame = await socket.receive_json(timeout=5)
    assert frame["stream_id"] == opened["stream_id"]  # the same bubble, redrawn
    assert frame["text"] == "Yes, for up to three months."
