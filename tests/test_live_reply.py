"""`LiveReply` on its own: the real policy guard and memory store, recording channels in place
of the providers, and drafts written by hand, so each test reads exactly what a customer was
shown, step by step."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from brain.config import BrainConfig
from brain.policy import PolicyGuard
from gateway.message import Outbound, Role, utcnow
from gateway.store.memory import MemoryStore
from gateway.streaming import LiveReply
from tests.fakes.recording import RecordingChannel, RecordingStreamingChannel

KEY = "rest:ann"
WAIT = "One moment…"


def live(
    channel: RecordingChannel, store: MemoryStore, *, first_response: float = 5.0
) -> LiveReply:
    return LiveReply(
        channel=channel,
        store=store,
        policy=PolicyGuard(BrainConfig().policy),
        reply=Outbound(channel="rest", conversation=KEY, text="", in_reply_to="m1"),
        received_at=utcnow(),
        first_response=first_response,
        wait=WAIT,
    )


def store() -> MemoryStore:
    return MemoryStore(dedupe_ttl=86_400, conversation_ttl=3_600)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_complete_sentences_are_released_in_order_and_the_reply_recorded_once() -> None:
    channel, memory = RecordingStreamingChannel(), store()
    reply = live(channel, memory)
    reply.grow("Yes, you can")
    await settle()
    assert channel.streams == []  # no complete sentence yet
    reply.grow("Yes, you can. Open Account")
    await settle()
    reply.grow("Yes, you can. Open Account, then Pause! Deliveries")
    await settle()
    parts = await reply.finish("Yes, you can. Open Account, then Pause! Deliveries stop.")
    assert channel.streams == [
        [
            ("open", "Yes, you can."),
            ("append", " Open Account, then Pause!"),
            ("append", " Deliveries stop."),
            ("finish", "Yes, you can. Open Account, then Pause! Deliveries stop."),
        ]
    ]
    assert parts == ("Yes, you can. Open Account, then Pause! Deliveries stop.",)
    [entry] = await memory.transcript(KEY)
    assert (entry.role, entry.in_reply_to, entry.holding) == (Role.BOT, "m1", False)
    assert entry.first_response_ms is not None and entry.latency_ms is not None
    assert entry.first_response_ms <= entry.latency_ms
    assert channel.sent == []  # nothing went out but the stream


async def test_a_reply_that_ends_otherwise_than_shown_replaces_it() -> None:
    channel = RecordingStreamingChannel()
    reply = live(channel, store())
    reply.grow("Yes, you can. And")
    await settle()
    # A retry's text that does not extend what was released is held back.
    reply.grow("Sure thing. Go")
    await settle()
    await reply.finish("Sure thing, go to Account.")
    assert channel.streams == [
        [("open", "Yes, you can."), ("replace", "Sure thing, go to Account.")]
    ]


async def test_a_sentence_that_breaks_the_policy_is_never_shown_and_stops_the_work() -> None:
    channel = RecordingStreamingChannel()
    reply = live(channel, store())
    cancelled = asyncio.Event()

    async def answer() -> str:
        reply.grow("Thanks for waiting. Your refund has been approved. More")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    assert await asyncio.wait_for(reply.wait_for(answer()), 5) is None
    assert cancelled.is_set() and reply.violation is not None
    assert reply.violation.rule == "refund_promise"
    assert channel.streams == []  # the first sentence was released with the second, not alone
    await reply.finish("Sorry, a person will help.")
    assert channel.texts == ["Sorry, a person will help."]


async def test_a_slow_answer_gets_the_holding_line_then_the_answer_as_one_turn() -> None:
    channel, memory = RecordingChannel(), store()
    reply = live(channel, memory, first_response=0.2)

    async def slow() -> str:
        await asyncio.sleep(0.5)
        return "Yes."

    assert await reply.wait_for(slow()) == "Yes."
    assert await reply.finish("Yes.") == (WAIT, "Yes.")
    holding, answer = await memory.transcript(KEY)
    assert (holding.text, holding.holding, holding.in_reply_to) == (WAIT, True, "m1")
    assert (answer.text, answer.holding, answer.in_reply_to) == ("Yes.", False, "m1")
    assert answer.first_response_ms is not None and answer.latency_ms is not None
    assert 150 < answer.first_response_ms < 450 < answer.latency_ms


async def test_a_message_already_late_gets_no_holding_line() -> None:
    channel = RecordingChannel()
    reply = LiveReply(
        channel=channel,
        store=store(),
        policy=PolicyGuard(BrainConfig().policy),
        reply=Outbound(channel="rest", conversation=KEY, text="", in_reply_to="m1"),
        received_at=utcnow() - timedelta(seconds=3),
        first_response=1.85,
        wait=WAIT,
    )

    async def quick() -> str:
        await asyncio.sleep(0.1)
        return "Yes."

    await reply.wait_for(quick())
    assert await reply.finish("Yes.") == ("Yes.",)


async def test_a_stream_that_fails_leaves_the_whole_reply_to_be_sent_once() -> None:
    channel = RecordingStreamingChannel()
    channel.failing = ConnectionResetError("provider hung up")
    reply = live(channel, store())
    reply.grow("Yes, you can. More")
    await settle()
    channel.failing = None
    assert await reply.finish("Yes, you can. More here.") == ("Yes, you can. More here.",)
    assert channel.texts == ["Yes, you can. More here."]


async def test_a_reply_past_the_channels_limit_ends_the_stream_at_its_first_part() -> None:
    channel = RecordingStreamingChannel()  # 200 characters a message
    reply = live(channel, store())
    first = "Yes, you can pause it. "
    reply.grow(first + "x")
    await settle()
    long = first + "Then " + "word " * 60 + "end."
    parts = await reply.finish(long)
    assert len(parts) >= 2 and all(len(part) <= 200 for part in parts)
    assert " ".join(parts).split() == long.split()
    [steps] = channel.streams
    assert steps[0] == ("open", "Yes, you can pause it.")
    assert steps[-1] == ("finish", parts[0])
    assert channel.texts == list(parts[1:])
