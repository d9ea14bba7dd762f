"""The weekly digest: its schedule and config, its figures against a small archive computed
here from the same table of contacts, one post across two workers sharing a real redis-server
(with a failed post retried and a restart neither doubling nor losing it), `gateway digest`,
and the live series on /metrics."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.web.async_client import AsyncWebClient
from typer.testing import CliRunner

from gateway import metrics
from gateway.app.cli import app
from gateway.app.digest import (
    SlackDigestPoster,
    composer,
    open_weekly_digest,
    report_url,
    waiting_drafts,
)
from gateway.app.settings import GatewayConfig, parse_config
from gateway.archive import ArchiveEvent, Decided, EventKind
from gateway.archive.database import ArchiveDatabase, database_url
from gateway.archive.digest import Digest
from gateway.archive.digest_blocks import digest_blocks
from gateway.archive.migrate import upgrade
from gateway.bus.memory import MemoryBus
from gateway.config import ConfigError, DigestConfig, HandoffConfig
from gateway.message import Action, Conversation, Inbound, Reason, Source, conversation_key
from gateway.redis_client import connect_redis
from gateway.relay import Relay
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.weekly import KEY, WeeklyDigest, is_occurrence, next_digest
from tests.fakes import until
from tests.fakes.recording import RecordingConsole
from tests.fakes.slack_api import BOT_TOKEN, FakeSlack
from tests.harness import Gateway

AGENTS = "C0AGENTS"
DUE = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # a Monday
UTC_ZONE = ZoneInfo("UTC")
DAY = timedelta(days=1)


# -- the schedule and its config -------------------------------------------------------------


def test_the_next_digest_is_the_next_weekday_at_the_local_time() -> None:
    london = DigestConfig(day="mon", at="09:00", timezone="Europe/London")  # type: ignore[arg-type]
    sunday = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
    assert next_digest(london, sunday) == DUE  # GMT in winter
    assert next_digest(london, DUE) == DUE + 7 * DAY  # strictly after
    summer = next_digest(london, datetime(2026, 7, 1, tzinfo=UTC))
    assert summer == datetime(2026, 7, 6, 8, 0, tzinfo=UTC)  # 09:00 BST
    assert is_occurrence(london, DUE) and not is_occurrence(london, DUE + timedelta(hours=1))
    friday = DigestConfig(day="fri", at="17:30", timezone="America/New_York")  # type: ignore[arg-type]
    assert next_digest(friday, DUE) == datetime(2026, 12, 4, 22, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("digest", "problem"),
    [
        ("day: monday", "digest.day (line 3): Input should be 'mon'"),
        (
            "at: 9:00",
            'digest.at (line 3): Value error, write the time of day in quotes, as "HH:MM"',
        ),
        ("at: '25:00'", "digest.at (line 3): Input should be in a valid time format"),
        ("timezone: Mars/Olympus", "digest.timezone (line 3): Value error, unknown time zone"),
        ("public_url: support.example.com", "digest.public_url (line 3): Input should be a valid"),
        ("retry_after: 0", "digest.retry_after (line 3): Input should be greater than 0"),
        ("colour: blue", "digest.colour (line 3): unknown key"),
        ("enabled: true", "digest.enabled is true: set digest.channel or handoff.escalation_"),
    ],
)
def test_a_bad_digest_config_is_refused_with_its_key_path(digest: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(f"digest:\n  check_interval: 30\n  {digest}\n")
    assert problem in str(refused.value)


def test_a_digest_needs_the_bot_token_and_goes_to_the_agents_channel_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = "digest: {enabled: true}\nhandoff: {escalation_channel: C0AGENTS}\n"
    with pytest.raises(ConfigError, match="posted with SLACK_BOT_TOKEN"):
        parse_config(text)
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    config = parse_config(text + "channels: {slack: {enabled: true, signing_secret: s}}\n")
    assert config.digest_channel == AGENTS
    assert parse_config("digest: {channel: C0DIGEST}").digest_channel == "C0DIGEST"


# -- the figures, against a table of contacts ------------------------------------------------


@dataclass(frozen=True)
class Contact:
    """One contact as the test writes it: the archive's rows are made from it, and the
    expected figures are counted from it here, apart from the report."""

    customer: str
    start: datetime
    latency_ms: float
    reason: Reason | None = None  # escalated, and why
    claimed_after: float | None = None  # seconds
    resolved: bool = False
    timed_out: bool = False
    score: int | None = None
    text: str = "How do I descale my kettle?"


THIS_WEEK = [
    Contact("ann", DUE - 5 * DAY, 400),  # assumed
    Contact("bob", DUE - 5 * DAY, 800, score=5),  # confirmed
    Contact("cid", DUE - 4 * DAY, 1200, score=2),  # unresolved
    Contact("dan", DUE - 3 * DAY, 300, Reason.HUMAN_REQUESTED, claimed_after=120, resolved=True),
    Contact("eve", DUE - 3 * DAY, 500, Reason.LOW_CONFIDENCE, 600, text="Do you ship to Mars?"),
    Contact(
        "fay",
        DUE - 2 * DAY,
        600,
        Reason.LOW_CONFIDENCE,
        timed_out=True,
        text="Do you ship to Mars? ",
    ),
]
WEEK_BEFORE = [
    Contact("gus", DUE - 10 * DAY, 1000, score=4),  # confirmed
    Contact("hal", DUE - 9 * DAY, 2000),  # assumed
]


def rows(contact: Contact) -> list[ArchiveEvent]:
    key = conversation_key("rest", contact.customer)

    def event(kind: EventKind, at: datetime, **fields: Any) -> ArchiveEvent:
        return ArchiveEvent(
            id=f"{contact.customer}:{kind.value}",
            kind=kind,
            conversation=key,
            channel="rest",
            customer=contact.customer,
            at=at,
            **fields,
        )

    action = Action.ESCALATE if contact.reason else Action.ANSWER
    decided = Decided(
        action=action,
        reason=contact.reason,
        sources=(Source(source="kb/descaling.md", title="Descaling"),),
        latency_ms=contact.latency_ms,
        replied=True,
    )
    start, later = contact.start, contact.start + timedelta(minutes=1)
    made = [event(EventKind.TURN, start, text=contact.text, decision=decided)]
    if contact.reason:
        made.append(event(EventKind.ESCALATED, start))
    if contact.claimed_after is not None:
        claimed = start + timedelta(seconds=contact.claimed_after)
        made.append(event(EventKind.CLAIMED, claimed, agent="Dana"))
        if contact.resolved:
            made.append(event(EventKind.RESOLVED, claimed + timedelta(minutes=5), agent="Dana"))
    if contact.timed_out:
        made.append(event(EventKind.TIMED_OUT, start + timedelta(hours=1)))
    if contact.score is not None:
        made.append(event(EventKind.SATISFACTION, later, score=contact.score))
    return made


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def expected(week: list[Contact]) -> dict[str, float | None]:
    bot = [c for c in week if c.reason is None]
    scores = [c.score for c in week if c.score is not None]
    return {
        "Conversations": len(week),
        "Resolved, confirmed": sum(c.score is not None and c.score >= 4 for c in bot) / len(week),
        "Resolved, assumed": sum(c.score is None for c in bot) / len(week),
        "Escalated": (len(week) - len(bot)) / len(week),
        "First response p95": percentile([c.latency_ms / 1000 for c in week], 0.95),
        "Time to claim p50": percentile(
            [c.claimed_after for c in week if c.claimed_after is not None], 0.5
        ),
        "Satisfaction": sum(scores) / len(scores) if scores else None,
    }


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[ArchiveDatabase]:
    database = ArchiveDatabase(database_url(None, tmp_path))  # SQLite in the data dir
    await upgrade(database)
    await database.write([row for contact in THIS_WEEK + WEEK_BEFORE for row in rows(contact)])
    yield database
    await database.close()


def settings(tmp_path: Path, archive: ArchiveDatabase, **digest: Any) -> GatewayConfig:
    return GatewayConfig(
        data_dir=tmp_path,
        archive={"database_url": archive.url},
        digest={"channel": AGENTS, "public_url": "https://support.example.com/", **digest},
    )


def figures_of(digest: Digest, week: str) -> dict[str, float | None]:
    return {figure.name: getattr(figure, week) for figure in digest.figures}


def close_to(
    got: dict[str, float | None], wanted: dict[str, float | None]
) -> dict[str, tuple[float | None, float | None]]:
    """The figures that differ (the report rounds rates to 4 places, seconds to 3)."""
    return {
        name: (got[name], value)
        for name, value in wanted.items()
        if (got[name] is None) != (value is None)
        or (value is not None and abs(got[name] - value) > 1e-3)  # type: ignore[operator]
    }


async def test_the_digest_holds_the_weeks_figures_the_questions_and_the_drafts(
    archive: ArchiveDatabase, tmp_path: Path
) -> None:
    drafts = tmp_path / "kb-drafts"
    drafts.mkdir()
    (drafts / "shipping-to-mars.md").write_text("# Do you ship to Mars?\n\nNot yet.\n")
    (drafts / "gift-cards.md").write_text("Gift cards arrive by email.\n")
    config = settings(tmp_path, archive)
    digest = await composer(config, archive)(DUE)
    assert close_to(figures_of(digest, "this_week"), expected(THIS_WEEK)) == {}
    assert close_to(figures_of(digest, "week_before"), expected(WEEK_BEFORE)) == {}
    assert digest.top_unanswered == [("do you ship to mars?", 2)]
    assert digest.drafts == ["gift-cards", "Do you ship to Mars?"]  # by file name
    assert digest.report_url == "https://support.example.com/admin/report?since=7d"

    blocks = digest_blocks(digest, UTC_ZONE)
    for block in blocks:
        Block.parse(block).validate_json()  # type: ignore[union-attr]  # Slack's own limits
    assert blocks[0]["text"]["text"] == "Support this week: Mon 23 Nov to Mon 30 Nov"
    fields = {f["text"].split("\n")[0].strip("*"): f["text"] for f in blocks[1]["fields"]}
    now, before = expected(THIS_WEEK), expected(WEEK_BEFORE)
    assert fields["Conversations"].endswith("6  (last week 2, +4)")
    confirmed = f"{now['Resolved, confirmed']:.1%}  (last week {before['Resolved, confirmed']:.1%}"
    assert confirmed in fields["Resolved, confirmed"]
    assert f"{now['Escalated']:.1%}  (last week 0.0%, +50.0 pts)" in fields["Escalated"]
    assert "6.0 min  (last week n/a)" in fields["Time to claim p50"]  # 360 s
    assert "3.50 / 5 (2 answers)  (last week 4.00)" in fields["Satisfaction"]
    text = json.dumps(blocks, ensure_ascii=False)
    assert "“do you ship to mars?” (2)" in text
    assert "drafts waiting for review: 2" in text and "gateway kb drafts" in text
    assert "<https://support.example.com/admin/report?since=7d|The full report>" in text


def test_no_review_folder_leaves_the_drafts_out(tmp_path: Path) -> None:
    assert waiting_drafts(tmp_path / "kb-drafts") is None
    assert report_url(GatewayConfig(data_dir=tmp_path)) is None


# -- once across workers ---------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def worker(
    archive: ArchiveDatabase, tmp_path: Path, slack: FakeSlack, redis_url: str
) -> AsyncIterator[Callable[..., WeeklyDigest]]:
    """A worker's weekly loop, each on its own connection to the shared redis-server."""
    clients = [connect_redis(redis_url)]
    await clients[0].flushdb()

    def start(clock: Clock, **digest: Any) -> WeeklyDigest:
        config = settings(tmp_path, archive, **digest)
        clients.append(client := connect_redis(redis_url))
        return WeeklyDigest(
            config=config.digest,
            channel=AGENTS,
            store=RedisStore(client, dedupe_ttl=86_400, conversation_ttl=3600),
            compose=composer(config, archive),
            poster=SlackDigestPoster(AsyncWebClient(token=BOT_TOKEN, base_url=slack.base_url)),
            clock=clock,
        )

    yield start
    for client in clients:
        await client.aclose()


async def test_two_workers_post_the_digest_once_at_its_due_time(
    worker: Callable[..., WeeklyDigest], slack: FakeSlack
) -> None:
    clock = Clock(DUE - timedelta(hours=1))
    first, second = worker(clock), worker(clock)
    assert await first.schedule() == DUE
    assert await second.schedule() == DUE  # the first one's, kept
    assert await asyncio.gather(first.post_if_due(), second.post_if_due()) == [False, False]
    assert slack.posted(AGENTS) == []

    clock.now = DUE + timedelta(seconds=1)
    assert sorted(await asyncio.gather(first.post_if_due(), second.post_if_due())) == [False, True]
    [posted] = slack.posted(AGENTS)
    assert posted["text"].startswith(
        "Support this week: Mon 23 Nov to Mon 30 Nov. Conversations 6;"
    )
    assert posted["blocks"][1]["fields"][0]["text"].endswith("6  (last week 2, +4)")
    # The next one is scheduled; a restarted worker keeps it and posts nothing more.
    restarted = worker(clock)
    assert await restarted.schedule() == DUE + 7 * DAY
    assert not await restarted.post_if_due() and not await first.post_if_due()
    assert len(slack.posted(AGENTS)) == 1


async def test_a_changed_schedule_moves_the_timer_and_a_stale_one_is_skipped(
    worker: Callable[..., WeeklyDigest],
) -> None:
    clock = Clock(DUE - timedelta(hours=1))
    assert await worker(clock).schedule() == DUE
    assert await worker(clock, day="wed").schedule() == DUE + 2 * DAY
    clock.now = DUE + 9 * DAY + timedelta(hours=1)  # every worker down for over a week
    assert await worker(clock, day="wed").schedule() == DUE + 16 * DAY


async def test_the_hand_off_sweep_leaves_the_digest_timer_alone() -> None:
    store, bus = MemoryStore(dedupe_ttl=86_400, conversation_ttl=3600), MemoryBus(max_concurrency=4)
    relay = Relay(
        console=RecordingConsole(),
        store=store,
        bus=bus,
        channels={},
        config=HandoffConfig(escalation_channel=AGENTS),
        clock=lambda: DUE,
    )
    await store.schedule(KEY, DUE - timedelta(minutes=2))
    await store.save(Conversation(key="rest:kim", channel="rest", customer="kim"))
    await store.schedule("rest:kim", DUE - timedelta(minutes=1))
    ticks: list[Inbound] = []

    async def record(message: Inbound) -> None:
        ticks.append(message)

    consuming = asyncio.create_task(bus.consume(record))
    sweeping = asyncio.create_task(relay.run(sweep_interval=0.01))
    try:
        await until(lambda: bool(ticks))  # a sweep went past the digest's earlier timer
    finally:
        for task in (sweeping, consuming):
            task.cancel()
        await asyncio.gather(sweeping, consuming, return_exceptions=True)
        await bus.close()
    assert [tick.conversation for tick in ticks] == ["rest:kim"]
    assert await store.scheduled(KEY) == DUE - timedelta(minutes=2)


async def test_the_worker_runs_the_digest_only_when_enabled(
    tmp_path: Path, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    config = GatewayConfig(
        data_dir=tmp_path,
        channels={"slack": {"api_url": slack.base_url}},
        digest={"enabled": True, "channel": AGENTS},
    )
    async with Gateway.open(config, embedded=True) as gw:
        weekly = open_weekly_digest(gw.runtime)
        assert weekly is not None
        due = await weekly.schedule()
        assert await gw.runtime.store.scheduled(KEY) == due and is_occurrence(config.digest, due)
        off = gw.runtime.config.model_copy(update={"digest": DigestConfig()})
        gw.runtime.config = off
        assert open_weekly_digest(gw.runtime) is None


# -- the command and the metrics -------------------------------------------------------------


async def test_gateway_digest_prints_the_blocks_and_posts_them(
    archive: ArchiveDatabase, tmp_path: Path, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\narchive: {{database_url: '{archive.url}'}}\n"
        f"digest: {{channel: {AGENTS}}}\nchannels: {{slack: {{api_url: '{slack.base_url}'}}}}\n"
    )
    runner = CliRunner()
    dry = await asyncio.to_thread(runner.invoke, app, ["digest", "--dry-run", "-c", str(config)])
    assert dry.exit_code == 0, dry.output
    message = json.loads(dry.stdout)
    assert message["channel"] == AGENTS and message["blocks"][0]["type"] == "header"
    assert slack.calls_to("chat.postMessage") == []
    refused = await asyncio.to_thread(runner.invoke, app, ["digest", "--post", "-c", str(config)])
    assert refused.exit_code == 2 and "SLACK_BOT_TOKEN" in refused.output
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    posted = await asyncio.to_thread(runner.invoke, app, ["digest", "--post", "-c", str(config)])
    assert posted.exit_code == 0, posted.output
    [sent] = slack.posted(AGENTS)
    assert sent["blocks"] == message["blocks"]
    neither = await asyncio.to_thread(runner.invoke, app, ["digest", "-c", str(config)])
    assert neither.exit_code == 2


async def test_metrics_expose_outcomes_satisfaction_and_digests(tmp_path: Path) -> None:
    metrics.observe_archived(
        ArchiveEvent(
            id="m1:satisfaction",
            kind=EventKind.SATISFACTION,
            conversation="sms:+15550001",
            channel="sms",
            customer="+15550001",
            at=DUE,
            score=4,
        )
    )
    metrics.observe_archived(
        ArchiveEvent(
            id="m1:escalated",
            kind=EventKind.ESCALATED,
            conversation="sms:+15550001",
            channel="sms",
            customer="+15550001",
            at=DUE,
        )
    )
    async with Gateway.open(GatewayConfig(data_dir=tmp_path), embedded=True) as gw:
        text = await (await gw.http.get("/metrics")).text()
    assert 'gateway_satisfaction_answers_total{channel="sms",score="4"}' in text
    assert 'gateway_outcomes_total{channel="sms",outcome="escalated"}' in text
    assert "# TYPE gateway_digests_total counter" in text
