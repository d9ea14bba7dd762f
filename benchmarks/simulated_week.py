"""A simulated week, compressed: thousands of contacts through the real gateway, then the
report's figures against counts computed from this script's own log.

Customers write on REST and as Slack DMs; the offline answerer answers from the sample help
centre; escalations reach agents in the fake Slack (real slack-bolt and slack_sdk), who reply
in the thread (claiming) and press Resolve or Claim as signed Slack requests; unclaimed ones
time out. Customers asked how satisfied they are (after an agent resolved, after a bot answer
met with silence) answer some of the time: a Slack DM customer with the ask's buttons, a REST
one with a reply that is just the digit. Some customers come back on the same question after
the resolution window (repeat contacts). Time is compressed: the resolution window is a few
seconds, not a day.

    python benchmarks/simulated_week.py --contacts 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.slack import EVENTS_PATH  # noqa: E402
from brain.knowledge import KnowledgeBase  # noqa: E402
from gateway import topics  # noqa: E402
from gateway.app.processes import start_archive_writer  # noqa: E402
from gateway.app.settings import GatewayConfig  # noqa: E402
from gateway.archive.report import build_report  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.message import Mode, TurnResult, conversation_key  # noqa: E402
from tests.fakes.slack_api import (  # noqa: E402
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    block_action,
    message_event,
    signed_event,
    signed_interaction,
)
from tests.harness import Gateway  # noqa: E402

ESCALATIONS = "C0ESCALATE"
AGENTS = {"U0DANA": "Dana", "U0LEE": "Lee"}
ANSWERABLE = "Can I skip next month's delivery?"
ASK_FOR_A_PERSON = "I want to talk to a person please"
UNANSWERABLE = "What is the meaning of life?"
# What each first contact does: (plan, weight).
PLANS = {"answered": 50, "resolved": 15, "claimed": 5, "abandoned": 15, "unanswerable": 15}
WINDOW, TIMEOUT = 3.0, 4.0  # seconds: the compressed resolution window and hand-off timeout
BOT_IDLE = 1.5  # seconds of silence after a bot answer before the satisfaction ask
RATES = 0.5  # the share of asked customers who answer
SCORES = {5: 40, 4: 25, 3: 15, 2: 10, 1: 10}  # what they answer: (score, weight)


@dataclass
class Contact:
    """One line of the script's log: what it did and what the gateway answered."""

    customer: str
    channel: str
    plan: str
    question: str
    action: str = ""
    reason: str | None = None
    sources: int = 0
    agent_actions: list[tuple[str, str]] = field(default_factory=list)  # (agent, what)
    score: int | None = None  # their answer to the satisfaction ask


class Week:
    def __init__(self, gw: Gateway, slack: FakeSlack, concurrency: int) -> None:
        self.gw, self.slack = gw, slack
        self.limit = asyncio.Semaphore(concurrency)
        self.results: defaultdict[str, list[TurnResult]] = defaultdict(list)
        topics.subscribe(gw.runtime.bus, topics.RESULTS, self._on_result)

    def _on_result(self, result: TurnResult) -> None:
        self.results[result.conversation].append(result)

    def key(self, contact: Contact) -> str:
        if contact.channel == "rest":
            return conversation_key("rest", contact.customer)
        return conversation_key("slack", TEAM_ID, dm(contact))

    async def ask(self, contact: Contact) -> None:
        async with self.limit:
            if contact.channel == "rest":
                body = await self.gw.ask(contact.customer, contact.question)
                decision = body["decision"]
                contact.action, contact.reason = decision["action"], decision["reason"]
                contact.sources = len(decision["sources"])
                return
            key = self.key(contact)
            seen = len(self.results[key])
            event = message_event(
                channel=dm(contact), user=f"U{contact.customer}", text=contact.question
            )
            await self._post(*signed_event(SIGNING_SECRET, event))
            await self._until(lambda: len(self.results[key]) > seen)
            decision = self.results[key][seen].decision
            contact.action = decision.action.value
            contact.reason = decision.reason.value if decision.reason else None
            contact.sources = len(decision.sources)

    async def act(self, contact: Contact, n: int) -> None:
        """The agents' part, as signed Slack requests from the fake workspace."""
        if contact.action != "escalate" or contact.plan not in ("resolved", "claimed"):
            return
        async with self.limit:
            key = self.key(contact)
            conversation = await self.gw.runtime.store.load(key)
            assert conversation is not None and conversation.agent_thread_ts is not None
            ts = conversation.agent_thread_ts
            agent = list(AGENTS)[n % len(AGENTS)]
            if contact.plan == "claimed":
                press = block_action(
                    "handoff_claim", key, user=agent, channel=ESCALATIONS, message_ts=ts
                )
                await self._post(*signed_interaction(SIGNING_SECRET, press))
                contact.agent_actions.append((AGENTS[agent], "claimed"))
                await self._until_mode(key, Mode.HUMAN)
                return
            reply = message_event(
                channel=ESCALATIONS,
                user=agent,
                text="Happy to help with that.",
                thread_ts=ts,
                channel_type="channel",
            )
            await self._post(*signed_event(SIGNING_SECRET, reply))
            contact.agent_actions += [(AGENTS[agent], "claimed"), (AGENTS[agent], "replies")]
            await self._until_mode(key, Mode.HUMAN)
            press = block_action(
                "handoff_resolve", key, user=agent, channel=ESCALATIONS, message_ts=ts
            )
            await self._post(*signed_interaction(SIGNING_SECRET, press))
            contact.agent_actions.append((AGENTS[agent], "resolved"))
            await self._until_mode(key, Mode.BOT)

    async def asked(self, contact: Contact) -> bool:
        """Whether the gateway asked this customer to rate (it asks each conversation once)."""
        conversation = await self.gw.runtime.store.load(self.key(contact))
        return conversation is not None and conversation.satisfaction.ask_id is not None

    async def rate(self, contact: Contact, score: int) -> None:
        """The customer answers the ask: presses its button on Slack, replies the digit on
        REST; then waits until the gateway has it."""
        async with self.limit:
            if contact.channel == "rest":
                body = await self.gw.ask(contact.customer, str(score))
                assert body["replies"], body  # thanked for, not answered as a question
            else:
                ask = next(
                    m for m in self.slack.posted(dm(contact)) if len(m.get("blocks", [])) > 1
                )
                buttons = ask["blocks"][1]["elements"]
                button = next(b for b in buttons if b["text"]["text"] == str(score))
                press = block_action(
                    button["action_id"],
                    button["value"],
                    user=f"U{contact.customer}",
                    channel=dm(contact),
                    message_ts=ask["ts"],
                )
                await self._post(*signed_interaction(SIGNING_SECRET, press))
            contact.score = score

            async def recorded() -> bool:
                conversation = await self.gw.runtime.store.load(self.key(contact))
                return conversation is not None and conversation.satisfaction.score == score

            await self._until(recorded)

    async def _post(self, body: str, headers: dict[str, str]) -> None:
        response = await self.gw.http.post(EVENTS_PATH, data=body, headers=headers)
        assert response.status == 200, await response.text()

    async def _until_mode(self, key: str, mode: Mode, within: float = 60.0) -> None:
        async def reached() -> bool:
            conversation = await self.gw.runtime.store.load(key)
            return conversation is not None and conversation.mode is mode

        await self._until(reached, within)

    @staticmethod
    async def _until(condition, within: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + within
        while True:
            outcome = condition()
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            if outcome:
                return
            if time.monotonic() > deadline:
                raise SystemExit("the gateway did not get there in time")
            await asyncio.sleep(0.05)


def dm(contact: Contact) -> str:
    """The Slack DM channel of a Slack customer."""
    return f"D{contact.customer.upper()}"


def expected_figures(log: list[Contact], repeats: list[Contact]) -> dict[str, object]:
    """The report's figures, computed from the log alone."""
    outcomes: Counter[str] = Counter()
    for contact in [*log, *repeats]:
        if contact.action == "escalate":
            done = {what for _agent, what in contact.agent_actions}
            outcome = (
                "resolved_by_agent" if "resolved" in done else "escalated" if done else "abandoned"
            )
        elif contact.score is not None:  # rated: a good score confirms, a poor one does not
            outcome = "confirmed" if contact.score >= 4 else "unresolved"
        else:
            outcome = "assumed" if contact.action == "answer" else "unresolved"
        outcomes[outcome] += 1
    agents: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for contact in log:
        for agent, what in contact.agent_actions:
            agents[agent][what] += 1
    first = {contact.customer: contact for contact in log}
    scores = Counter(contact.score for contact in log if contact.score is not None)
    repeat_count = sum(
        1
        for again in repeats
        if again.sources
        and first[again.customer].sources
        and first[again.customer].action == "answer"
    )
    return {
        "contacts": len(log) + len(repeats),
        "outcomes": {name: outcomes[name] for name in sorted(outcomes)},
        "escalations": dict(
            sorted(Counter(c.reason for c in [*log, *repeats] if c.action == "escalate").items())
        ),
        "agents": {a: {k: v for k, v in sorted(c.items())} for a, c in sorted(agents.items())},
        "repeat_contacts": repeat_count,
        "ratings": {str(n): scores[n] for n in range(1, 6)},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    configure_logging("warning", "console", [])
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        KnowledgeBase(data_dir).ingest([str(ROOT / "config" / "knowledge")])
        async with FakeSlack(users=AGENTS) as slack:
            config = GatewayConfig(
                data_dir=data_dir,
                channels={
                    "slack": {
                        "enabled": True,
                        "bot_token": BOT_TOKEN,
                        "signing_secret": SIGNING_SECRET,
                        "api_url": slack.base_url,
                    }
                },
                handoff={
                    "escalation_channel": ESCALATIONS,
                    "timeout": TIMEOUT,
                    "reminder_interval": 3600,
                    "unclaimed_ping_after": 3600,
                    "sweep_interval": 0.2,
                },
                archive={"resolution_window": WINDOW, "flush_interval": 0.2},
                satisfaction={"after_agent": True, "after_bot": True, "bot_idle": BOT_IDLE},
                logging={"level": "warning"},
            )
            started = time.monotonic()
            async with Gateway.open(config, warm=True, timers=True) as gw:
                writer = await start_archive_writer(gw.runtime)
                week = Week(gw, slack, args.concurrency)
                plans, weights = list(PLANS), list(PLANS.values())
                log = []
                for n in range(args.contacts):
                    plan = rng.choices(plans, weights)[0]
                    question = {"answered": ANSWERABLE, "unanswerable": UNANSWERABLE}.get(
                        plan, ASK_FOR_A_PERSON
                    )
                    channel = "slack" if rng.random() < 0.3 else "rest"
                    log.append(Contact(f"c{n:05d}", channel, plan, question))
                await asyncio.gather(*(week.ask(contact) for contact in log))
                print(f"first contacts done: {time.monotonic() - started:.0f} s", flush=True)
                await asyncio.gather(*(week.act(contact, n) for n, contact in enumerate(log)))
                # The unclaimed wait out the hand-off timeout, then everyone the window.
                for contact in log:
                    if contact.action == "escalate" and not contact.agent_actions:
                        await week._until_mode(week.key(contact), Mode.BOT)
                # Asked after an agent resolved, or after a bot answer met with silence; some
                # answer. The ratings attach to these first contacts (the repeats come later).
                await asyncio.sleep(BOT_IDLE + 0.5)
                asked = [c for c in log if await week.asked(c)]
                raters = [c for c in asked if rng.random() < RATES]
                given = rng.choices(list(SCORES), list(SCORES.values()), k=len(raters))
                await asyncio.gather(
                    *(week.rate(c, score) for c, score in zip(raters, given, strict=True))
                )
                print(f"{len(asked)} asked to rate, {len(raters)} answered", flush=True)
                await asyncio.sleep(WINDOW + 0.5)
                again = [c for c in log if c.plan == "answered" and rng.random() < 0.2]
                repeats = [Contact(c.customer, c.channel, "repeat", c.question) for c in again]
                await asyncio.gather(*(week.ask(contact) for contact in repeats))
                await asyncio.sleep(WINDOW + 0.5)
                # Stopped as the gateway stops: the writer (a child process) commits what it
                # holds first.
                assert writer is not None and gw.runtime.archive is not None
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
                report_started = time.perf_counter()
                report = await build_report(
                    gw.runtime.archive,
                    since=timedelta(days=1),
                    window=timedelta(seconds=WINDOW),
                    repeat_window=timedelta(days=7),
                )
                report_seconds = time.perf_counter() - report_started
    elapsed = time.monotonic() - started
    expected = expected_figures(log, repeats)
    reported = {
        "contacts": report.contacts,
        "outcomes": {name: count for name, count in sorted(report.outcomes.items()) if count},
        "escalations": {reason: rate.count for reason, rate in sorted(report.escalations.items())},
        "agents": {
            agent: {k: v for k, v in sorted(load.items()) if v}
            for agent, load in report.agents.items()
        },
        "repeat_contacts": report.repeat_contacts.count,
        "ratings": report.satisfaction.scores,
    }
    print(
        f"\n{len(log)} first contacts + {len(repeats)} repeats, {report.messages} messages, "
        f"in {elapsed:.0f} s (load average {os.getloadavg()[0]:.1f}); "
        f"report in {report_seconds:.2f} s"
    )
    print(f"{'figure':<16} {'from the log':>40} {'report':>40}")
    for name in expected:
        mark = "ok" if expected[name] == reported[name] else "MISMATCH"
        print(f"{name:<16} {expected[name]!s:>40} {reported[name]!s:>40}  {mark}")
    for channel, p in report.first_response_seconds.items():
        print(f"first response {channel}: p50 {p.p50} s, p95 {p.p95} s ({p.count})")
    print(
        f"time to claim p50 {report.time_to_claim_seconds.p50} s, to resolve p50 "
        f"{report.time_to_resolve_seconds.p50} s"
    )
    if expected != reported:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
