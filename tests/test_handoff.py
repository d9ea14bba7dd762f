"""The hand-off: the state machine's table, race-free claims over Redis, timers, business hours.

The agents' console is the real `SlackConsole` (slack_sdk) against the local fake Slack Web
API; agents' events are published on the bus as the Slack adapter publishes them (its own
signed-request handling is covered in tests/test_slack.py and tests/test_handoff_e2e.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from brain.config import PolicyRule
from gateway.app.settings import GatewayConfig
from gateway.config import BusinessHours
from gateway.handoff import TRANSITIONS, Event, Rejected, State, transition
from gateway.message import (
    Action,
    Conversation,
    Inbound,
    InboundKind,
    Mode,
    Role,
    TurnResult,
    conversation_key,
    new_id,
)
from gateway.relay import Relay, describe_opening, next_opening
from tests.conftest import backend, flush_redis
from tests.fakes import until
from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.harness import Gateway

ESCALATIONS = "C0ESCALATE"
DANA, DANA_NAME = "U0DANA", "Dana"
LEE, LEE_NAME = "U0LEE", "Lee"
ASK_FOR_A_PERSON = "I want to talk to a person please"


# -- the table -------------------------------------------------------------------------------

# Written out independently of gateway/handoff.py: (mode, event) -> next mode, or the rejection.
EXPECTED: dict[tuple[Mode, Event], Mode | str] = {
    (Mode.BOT, Event.ESCALATE): Mode.WAITING,
    (Mode.BOT, Event.CLAIM): Mode.HUMAN,
    (Mode.BOT, Event.AGENT_REPLY): Mode.HUMAN,
    (Mode.BOT, Event.RESOLVE): "already back with the bot",
    (Mode.BOT, Event.HAND_BACK): "already back with the bot",
    (Mode.BOT, Event.TIMEOUT): "Nobody was waiting",
    (Mode.WAITING, Event.ESCALATE): "already waiting",
    (Mode.WAITING, Event.CLAIM): Mode.HUMAN,
    (Mode.WAITING, Event.AGENT_REPLY): Mode.HUMAN,
    (Mode.WAITING, Event.RESOLVE): Mode.BOT,
    (Mode.WAITING, Event.HAND_BACK): Mode.BOT,
    (Mode.WAITING, Event.TIMEOUT): Mode.BOT,
    (Mode.HUMAN, Event.ESCALATE): "already owns",
    (Mode.HUMAN, Event.CLAIM): "Already claimed by Dana",  # by someone else than the owner
    (Mode.HUMAN, Event.AGENT_REPLY): Mode.HUMAN,
    (Mode.HUMAN, Event.RESOLVE): Mode.BOT,
    (Mode.HUMAN, Event.HAND_BACK): Mode.BOT,
    (Mode.HUMAN, Event.TIMEOUT): "already owns",
}


def test_the_table_names_every_mode_and_event() -> None:
    assert set(EXPECTED) == {(mode, event) for mode in Mode for event in Event}
    assert set(TRANSITIONS) <= set(EXPECTED)


@pytest.mark.parametrize(("mode", "event"), list(EXPECTED))
def test_transition(mode: Mode, event: Event) -> None:
    owner = State(Mode.HUMAN, agent_id=DANA, agent=DANA_NAME) if mode is Mode.HUMAN else None
    state = owner or State(mode)
    expected = EXPECTED[(mode, event)]
    if not isinstance(expected, Mode):  # (Mode is a StrEnum: test for it, not for str)
        with pytest.raises(Rejected, match=expected):
            transition(state, event, agent_id=LEE, agent=LEE_NAME)
        return
    after = transition(state, event, agent_id=LEE, agent=LEE_NAME)
    assert after.mode is expected
    if expected is Mode.BOT or expected is Mode.WAITING:
        assert after.agent_id is None and after.agent is None
    elif mode is Mode.HUMAN:
        assert (after.agent_id, after.agent) == (DANA, DANA_NAME)  # a colleague's reply
    else:
        assert (after.agent_id, after.agent) == (LEE, LEE_NAME)  # claimed, or replied: owns it


def test_the_owner_claiming_again_changes_nothing() -> None:
    owned = State(Mode.HUMAN, agent_id=DANA, agent=DANA_NAME)
    assert transition(owned, Event.CLAIM, agent_id=DANA, agent=DANA_NAME) == owned


# -- a gateway with the hand-off -------------------------------------------------------------


@dataclass(kw_only=True)
class Handoff(Gateway):
    slack: FakeSlack

    @property
    def relay(self) -> Relay:
        assert self.runtime.relay is not None
        return self.runtime.relay

    async def publish(self, message: Inbound) -> TurnResult:
        """Publish on the bus (as the Slack adapter does) and wait for its turn."""
        with self.runtime.results.expect(message.id) as result:
            await self.runtime.bus.publish(message)
            return await asyncio.wait_for(result, 10)

    async def conversation(self, key: str) -> Conversation:
        conversation = await self.runtime.store.load(key)
        assert conversation is not None
        return conversation

    async def customer_heard(self, key: str) -> list[str]:
        """What was sent to the customer after their own messages (bot and agents)."""
        transcript = await self.runtime.store.transcript(key)
        return [entry.text for entry in transcript if entry.role in (Role.BOT, Role.AGENT)]

    def card(self, channel: str = ESCALATIONS) -> dict[str, Any]:
        parents = [m for m in self.slack.posted(channel) if "thread_ts" not in m]
        assert len(parents) == 1, parents
        return parents[0]

    def thread(self, channel: str = ESCALATIONS) -> list[str]:
        return [m["text"] for m in self.slack.replies(channel, self.card(channel)["ts"])]


def agent_event(
    kind: InboundKind, key: str, agent: str, name: str, text: str = "", **fields: Any
) -> Inbound:
    return Inbound(
        kind=kind,
        channel=key.split(":", 1)[0],
        conversation=key,
        sender=agent,
        author=name,
        text=text,
        provider_message_id=f"slack-action:{new_id()}:{agent}",
        **fields,
    )


def handoff_config(
    data_dir: Path, slack: FakeSlack, redis_url: str | None = None, **handoff: Any
) -> GatewayConfig:
    return GatewayConfig(
        data_dir=data_dir,
        redis_url=redis_url,
        channels={
            "slack": {
                "enabled": True,
                "bot_token": BOT_TOKEN,
                "signing_secret": SIGNING_SECRET,
                "api_url": slack.base_url,
            }
        },
        handoff={"escalation_channel": ESCALATIONS, **handoff},
    )


@asynccontextmanager
async def open_handoff(
    config: GatewayConfig, slack: FakeSlack, *, timers: bool = False
) -> AsyncIterator[Handoff]:
    """Web and worker roles in one process; `timers` runs the relay's sweeper too."""
    async with Handoff.open(config, timers=timers, slack=slack) as handoff:
        yield handoff


@pytest.fixture(params=["memory", "redis"])
async def backend_url(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str | None:
    return await backend(request, monkeypatch)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(users={DANA: DANA_NAME, LEE: LEE_NAME}) as fake:
        yield fake


@pytest.fixture
async def handoff(
    slack: FakeSlack, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Handoff]:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    async with open_handoff(handoff_config(sample_data_dir, slack), slack) as gateway:
        yield gateway


# -- escalation and agents' events -----------------------------------------------------------


async def test_escalation_opens_one_thread_and_tells_the_customer_when(handoff: Handoff) -> None:
    answer = await handoff.ask("ann", ASK_FOR_A_PERSON)
    assert answer["decision"]["action"] == "escalate"
    assert "usually within 10 minutes" in answer["replies"][0]["text"]
    assert "No one from our team is connected" not in answer["replies"][0]["text"]
    key = conversation_key("rest", "ann")
    conversation = await handoff.conversation(key)
    card = handoff.card()
    assert conversation.mode is Mode.WAITING
    assert (conversation.agent_thread_channel, conversation.agent_thread_ts) == (
        ESCALATIONS,
        card["ts"],
    )
    assert await handoff.runtime.store.thread_conversation(f"{ESCALATIONS}:{card['ts']}") == key
    assert "Waiting for an agent" in card["text"]
    card_text = str(card["blocks"])
    assert "human requested" in card_text and ASK_FOR_A_PERSON in card_text
    assert ASK_FOR_A_PERSON in handoff.thread()[0]  # the transcript follows the card


async def test_a_reply_claims_a_waiting_conversation_signed_with_the_agents_name(
    handoff: Handoff,
) -> None:
    await handoff.ask("ann", ASK_FOR_A_PERSON)
    key = conversation_key("rest", "ann")
    await handoff.publish(
        agent_event(InboundKind.AGENT_REPLY, key, DANA, DANA_NAME, "Your refund is on its way.")
    )
    conversation = await handoff.conversation(key)
    assert (conversation.mode, conversation.agent) == (Mode.HUMAN, DANA_NAME)
    assert (await handoff.customer_heard(key))[-1] == "Dana: Your refund is on its way."
    assert "Claimed by Dana" in handoff.card()["text"]
    assert await handoff.runtime.store.due(datetime.now(UTC).replace(year=2100), 10) == []


async def test_a_note_stays_in_the_thread_and_never_reaches_the_customer(
    handoff: Handoff,
) -> None:
    await handoff.ask("ann", ASK_FOR_A_PERSON)
    key = conversation_key("rest", "ann")
    heard = await handoff.customer_heard(key)
    await handoff.publish(
        agent_event(InboundKind.AGENT_NOTE, key, DANA, DANA_NAME, "VIP customer, be nice")
    )
    transcript = await handoff.runtime.store.transcript(key)
    assert await handoff.customer_heard(key) == heard
    assert not any("VIP" in entry.text for entry in transcript)
    assert (await handoff.conversation(key)).mode is Mode.WAITING  # a note claims nothing


async def test_resolving_a_conversation_the_bot_owns_is_refused_in_the_thread(
    handoff: Handoff,
) -> None:
    await handoff.ask("ann", ASK_FOR_A_PERSON)
    key = conversation_key("rest", "ann")
    await handoff.publish(agent_event(InboundKind.HAND_BACK, key, DANA, DANA_NAME))
    assert (await handoff.conversation(key)).mode is Mode.BOT
    assert "back with our assistant" in (await handoff.customer_heard(key))[-1]
    await handoff.publish(agent_event(InboundKind.RESOLVE, key, LEE, LEE_NAME))
    assert handoff.thread()[-1] == "Lee: This conversation is already back with the bot."
    assert (await handoff.conversation(key)).mode is Mode.BOT


async def test_a_delivery_report_is_posted_once_in_the_thread(
    slack: FakeSlack, sample_data_dir: Path
) -> None:
    """The channel notes it in the transcript (`ChannelContext.report_undelivered`); the relay
    only tells the agents, once however often the provider reports it."""
    async with open_handoff(handoff_config(sample_data_dir, slack), slack, timers=True) as gw:
        await gw.ask("ann", ASK_FOR_A_PERSON)
        key = conversation_key("rest", "ann")
        report = {
            "conversation": key,
            "channel": "rest",
            "status": "undelivered",
            "detail": "30003 unreachable handset",
            "provider_message_id": "SM123",
        }
        traffic = gw.traffic
        for _ in range(2):  # a provider reporting the same failure twice
            await gw.runtime.bus.broadcast("delivery", report)
        expected = "A message to the customer was not delivered (undelivered): 30003 unreachable"
        await until(lambda: any(line.startswith(expected) for line in gw.thread()))
        # The relay turns each report into an event on the bus: both handled, so a second
        # line would be in the thread by now.
        reports = [InboundKind.DELIVERY] * 2
        await until(lambda: [m.kind for m in traffic.published[1:]] == reports)
        await traffic.settled()
        assert sum(line.startswith(expected) for line in gw.thread()) == 1
        transcript = await gw.runtime.store.transcript(key)
        assert not any(entry.text.startswith(expected) for entry in transcript)


async def test_an_agent_reply_that_cannot_be_delivered_is_reported_in_the_thread(
    handoff: Handoff,
) -> None:
    """The customer writes on Slack; Slack refuses the agent's reply to them."""
    key = conversation_key("slack", "T0000TEAM", "D0CUSTOMER")
    customer = Inbound(
        channel="slack",
        conversation=key,
        sender="U0CUSTOMER",
        text=ASK_FOR_A_PERSON,
        provider_message_id="slack:D0CUSTOMER:1.000001",
        thread="1.000001",
        extras={"channel": "D0CUSTOMER"},
    )
    assert (await handoff.publish(customer)).decision.action is Action.ESCALATE
    handoff.slack.fail("chat.postMessage", "is_archived")  # the next post: the agent's reply
    await handoff.publish(agent_event(InboundKind.AGENT_REPLY, key, DANA, DANA_NAME, "Hello!"))
    assert "Delivery to the customer failed: SlackApiError" in handoff.thread()[-1]
    assert "Dana: Hello!" in handoff.thread()[-1]
    transcript = await handoff.runtime.store.transcript(key)
    assert transcript[-1].role is Role.SYSTEM
    assert "Dana: Hello!" not in await handoff.customer_heard(key)


async def test_routes_send_some_escalations_to_another_channel(
    slack: FakeSlack, sample_data_dir: Path
) -> None:
    routes = [
        {"customer_channel": "telegram", "channel": "C0TELEGRAM"},
        {"customer_channel": "rest", "reason": "human_requested", "channel": "C0REST"},
    ]
    config = handoff_config(sample_data_dir, slack, routes=routes)
    async with open_handoff(config, slack) as gw:
        await gw.ask("ann", ASK_FOR_A_PERSON)
        assert gw.card("C0REST")["ts"]
        assert slack.posted(ESCALATIONS) == [] and slack.posted("C0TELEGRAM") == []


async def test_a_reply_the_policy_blocks_is_handed_to_the_agents(
    slack: FakeSlack, sample_data_dir: Path
) -> None:
    config = handoff_config(sample_data_dir, slack)
    rule = PolicyRule(name="no_pausing", pattern=r"\bpause", why="the operator decides")
    config.brain.policy.rules.append(rule)
    async with open_handoff(config, slack) as gw:
        answer = await gw.ask("ann", "Can I pause my subscription?")
        decision, reply = answer["decision"], answer["replies"][0]["text"]
        assert (decision["action"], decision["reason"]) == ("escalate", "policy_restricted")
        assert "no_pausing" in decision["explanation"]
        assert "pause" not in reply.lower() and "usually within 10 minutes" in reply
        assert "policy restricted" in str(gw.card()["blocks"])
        assert (await gw.conversation(conversation_key("rest", "ann"))).mode is Mode.WAITING


async def test_without_an_agents_console_escalation_says_where_to_reach_a_person(
    gateway: Any,
) -> None:
    assert gateway.runtime.relay is None
    answer = await gateway.ask("ann", ASK_FOR_A_PERSON)
    assert answer["decision"]["action"] == "escalate"
    assert "No one from our team is connected" in answer["replies"][0]["text"]


# -- race ------------------------------------------------------------------------------------


async def test_two_agents_claiming_at_once_over_redis_one_wins_and_the_other_is_told(
    slack: FakeSlack, sample_data_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    await flush_redis(redis_url)
    config = handoff_config(sample_data_dir, slack, redis_url)
    async with open_handoff(config, slack) as first, open_handoff(config, slack) as second:
        await first.ask("ann", ASK_FOR_A_PERSON)
        key = conversation_key("rest", "ann")
        claims = [
            agent_event(InboundKind.CLAIM, key, DANA, DANA_NAME),
            agent_event(InboundKind.CLAIM, key, LEE, LEE_NAME),
        ]
        # Each claim is published by a different process and awaited there: two consumers.
        await asyncio.gather(first.publish(claims[0]), second.publish(claims[1]))
        conversation = await first.conversation(key)
        winner = conversation.agent
        loser = LEE_NAME if winner == DANA_NAME else DANA_NAME
        assert conversation.mode is Mode.HUMAN and winner in (DANA_NAME, LEE_NAME)
        assert first.thread()[1:] == [f"{loser}: Already claimed by {winner}."]
        told = [text for text in await first.customer_heard(key) if "from our team is here" in text]
        assert told == [f"{winner} from our team is here and will reply in a moment."]
        assert f"Claimed by {winner}" in first.card()["text"]


# -- timers ----------------------------------------------------------------------------------


async def test_a_waiting_customer_is_reminded_agents_are_pinged_and_it_times_out(
    backend_url: str | None, slack: FakeSlack, sample_data_dir: Path
) -> None:
    config = handoff_config(
        sample_data_dir,
        slack,
        backend_url,
        reminder_interval=0.5,
        unclaimed_ping_after=0.8,
        timeout=1.6,
        sweep_interval=0.05,
        ping_group="S0AGENTS",
    )
    async with open_handoff(config, slack, timers=True) as gw:
        started = time.monotonic()
        await gw.ask("ann", ASK_FOR_A_PERSON)
        key = conversation_key("rest", "ann")
        await until(lambda: _mode(gw, key, Mode.BOT), within=10)
        elapsed = time.monotonic() - started
        heard = await gw.customer_heard(key)
        reminders = [text for text in heard if text.startswith("Thanks for waiting")]
        assert 1 <= len(reminders) <= 3
        assert heard[-1].startswith("Sorry, no one from our team could get to you in time")
        assert elapsed >= 1.6
        pings = [line for line in gw.thread() if "Still unclaimed" in line]
        assert len(pings) == 1 and pings[0].startswith("<!subteam^S0AGENTS>")
        assert "Nobody claimed this within" in gw.thread()[-1]
        assert "Back with the bot" in gw.card()["text"]
        assert await gw.runtime.store.due(datetime.now(UTC).replace(year=2100), 10) == []
        # Back with the bot: the next question is answered.
        answer = await gw.ask("ann", "Can I pause my subscription?")
        assert answer["decision"]["action"] == "answer" and answer["replies"]


async def test_a_claimed_conversation_gets_no_more_reminders(
    slack: FakeSlack, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    config = handoff_config(
        sample_data_dir, slack, reminder_interval=0.3, timeout=0.6, sweep_interval=0.05
    )
    async with open_handoff(config, slack, timers=True) as gw:
        await gw.ask("ann", ASK_FOR_A_PERSON)
        key = conversation_key("rest", "ann")
        await gw.publish(agent_event(InboundKind.CLAIM, key, DANA, DANA_NAME))
        heard = await gw.customer_heard(key)
        # Past the reminder and the timeout at once: the relay's clock jumps an hour ahead.
        # Its sweeper reads the clock once a sweep: a second read means a whole sweep ran at
        # that time, and whatever it found due was published (and is then processed).
        later = datetime.now(UTC) + timedelta(hours=1)
        reads = 0

        def clock() -> datetime:
            nonlocal reads
            reads += 1
            return later

        traffic = gw.traffic
        gw.relay.clock = clock
        await until(lambda: reads >= 2)
        await traffic.settled()
        assert await gw.customer_heard(key) == heard
        assert (await gw.conversation(key)).mode is Mode.HUMAN


async def _mode(gw: Handoff, key: str, mode: Mode) -> bool:
    return (await gw.conversation(key)).mode is mode


# -- business hours --------------------------------------------------------------------------

LONDON_OFFICE = BusinessHours(timezone="Europe/London", start="09:00", end="17:30")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 28, 12, 0, tzinfo=UTC), "on Monday at 09:00 (Europe/London)"),  # Sat
        (datetime(2026, 11, 24, 7, 0, tzinfo=UTC), "today at 09:00 (Europe/London)"),  # Tue
        (datetime(2026, 11, 24, 17, 30, tzinfo=UTC), "tomorrow at 09:00 (Europe/London)"),
        (datetime(2026, 11, 27, 23, 59, tzinfo=UTC), "on Monday at 09:00 (Europe/London)"),
        # Summer time: 08:30 UTC is 09:30 in London, open.
        (datetime(2026, 7, 1, 8, 30, tzinfo=UTC), None),
        (datetime(2026, 7, 1, 7, 30, tzinfo=UTC), "today at 09:00 (Europe/London)"),
    ],
)
def test_business_hours_say_when_the_team_is_back(now: datetime, expected: str | None) -> None:
    opens = next_opening(LONDON_OFFICE, now)
    described = None if opens is None else describe_opening(opens, now, LONDON_OFFICE)
    assert described == expected


async def test_after_hours_the_customer_is_told_when_the_team_is_back(
    slack: FakeSlack, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    hours = {"timezone": "America/New_York", "days": ["mon", "tue", "wed", "thu", "fri"]}
    config = handoff_config(sample_data_dir, slack, business_hours=hours)
    async with open_handoff(config, slack) as gw:
        # Friday 2026-11-27 22:00 UTC is 17:00 in New York: closed until Monday.
        gw.relay.clock = lambda: datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
        answer = await gw.ask("ann", ASK_FOR_A_PERSON)
        reply = answer["replies"][0]["text"]
        assert "Our team is away right now and back on Monday at 09:00 (America/New_York)" in reply
        assert "usually within" not in reply
        assert gw.card()["ts"]  # agents still see it at once


async def test_during_business_hours_the_customer_is_told_the_rough_wait(
    slack: FakeSlack, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    config = handoff_config(
        sample_data_dir, slack, business_hours={"timezone": "Asia/Tokyo"}, expected_wait=1200
    )
    async with open_handoff(config, slack) as gw:
        gw.relay.clock = lambda: datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # Tue 11:00 in Tokyo
        answer = await gw.ask("ann", ASK_FOR_A_PERSON)
        assert (
            "A person from our team will join you here, usually within 20 minutes."
            in (answer["replies"][0]["text"])
        )


def test_handoff_config_rejects_an_unknown_time_zone_and_a_signature_without_text() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        GatewayConfig(handoff={"business_hours": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ValueError, match="signature must contain"):
        GatewayConfig(handoff={"signature": "{agent} says hi"})
    with pytest.raises(ValueError, match=r"only \{agent\} and \{text\}"):
        GatewayConfig(handoff={"signature": "{text} — {name}"})


def test_reason_in_routes_is_checked() -> None:
    with pytest.raises(ValueError, match="reason"):
        GatewayConfig(handoff={"routes": [{"channel": "C1", "reason": "bored"}]})
    with pytest.raises(ValueError, match="needs customer_channel, reason or both"):
        GatewayConfig(handoff={"routes": [{"channel": "C1"}]})


def test_an_escalation_channel_needs_the_slack_app_to_hear_the_agents() -> None:
    with pytest.raises(ValueError, match=r"channels\.slack\.enabled must be true"):
        GatewayConfig(
            channels={"slack": {"bot_token": BOT_TOKEN}},
            handoff={"escalation_channel": ESCALATIONS},
        )
