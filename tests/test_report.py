"""Outcomes and the report: each definition on its own, the figures over a known archive (on
SQLite and PostgreSQL), `gateway report` and `/admin/report` (off without a token)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.app.cli import app
from gateway.app.settings import GatewayConfig
from gateway.archive import ArchiveEvent, Decided, EventKind
from gateway.archive.database import ArchiveDatabase, database_url
from gateway.archive.migrate import upgrade
from gateway.archive.outcomes import EventRow, Outcome, TurnRow, contacts
from gateway.archive.report import Report, build_report
from gateway.message import Action, Reason, Source, ToolCallRecord, conversation_key
from tests.harness import Gateway

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY, WINDOW = timedelta(days=1), timedelta(hours=24)
TOKEN = "admin-secret-token"


def row(at: datetime, action: str = "answer", *, reason: str | None = None) -> TurnRow:
    return TurnRow("rest:kim", "rest", "kim", at, action, reason, "Descaling", 100.0, True)


def outcome_of(turns: list[TurnRow], events: list[EventRow]) -> Outcome:
    [contact] = contacts(turns, events, window=WINDOW, repeat_window=7 * DAY, now=NOW)
    return contact.outcome


def event(kind: str, at: datetime, score: int | None = None) -> EventRow:
    return EventRow("rest:kim", kind, at, agent="Dana", score=score)


START = NOW - 3 * DAY


@pytest.mark.parametrize(
    ("turns", "events", "expected"),
    [
        ([row(START)], [], Outcome.ASSUMED),
        ([row(START)], [event("satisfaction", START, 5)], Outcome.CONFIRMED),
        ([row(START)], [event("satisfaction", START, 2)], Outcome.UNRESOLVED),
        ([row(NOW - timedelta(hours=2))], [], Outcome.PENDING),
        ([row(START, "escalate", reason="empty_message")], [], Outcome.ABANDONED),
        (
            [row(START, "escalate", reason="human_requested")],
            [event("escalated", START), event("timed_out", START + timedelta(hours=1))],
            Outcome.ABANDONED,
        ),
        (
            [row(START, "escalate", reason="human_requested")],
            [event("escalated", START), event("claimed", START), event("resolved", START)],
            Outcome.RESOLVED_BY_AGENT,
        ),
        (
            [row(NOW - timedelta(hours=1), "escalate", reason="human_requested")],
            [event("escalated", NOW - timedelta(hours=1))],
            Outcome.ESCALATED,  # still waiting, within the window
        ),
        ([row(START), row(START + timedelta(minutes=2), "answer")], [], Outcome.ASSUMED),
    ],
)
def test_each_outcome(turns: list[TurnRow], events: list[EventRow], expected: Outcome) -> None:
    assert outcome_of(turns, events) is expected


def test_a_long_silence_starts_a_new_contact_and_the_same_topic_again_is_a_repeat() -> None:
    turns = [row(START), row(START + 2 * DAY)]
    found = contacts(turns, [], window=WINDOW, repeat_window=7 * DAY, now=NOW)
    assert [contact.repeat for contact in found] == [False, True]
    later = contacts(
        [row(START - 8 * DAY), row(START)], [], window=WINDOW, repeat_window=7 * DAY, now=NOW
    )
    assert [contact.repeat for contact in later] == [False, False]  # beyond the repeat window


# -- a known archive -------------------------------------------------------------------------


def turn(
    customer: str,
    at: datetime,
    *,
    action: Action = Action.ANSWER,
    reason: Reason | None = None,
    text: str = "How do I descale?",
    topic: str | None = "Descaling",
    channel: str = "rest",
) -> ArchiveEvent:
    return ArchiveEvent(
        id=f"{customer}:{at.isoformat()}",
        kind=EventKind.TURN,
        conversation=conversation_key(channel, customer),
        channel=channel,
        customer=customer,
        at=at,
        text=text,
        decision=Decided(
            action=action,
            reason=reason,
            confidence=0.7,
            sources=(Source(source=f"kb/{topic}.md", title=topic),) if topic else (),
            latency_ms=250.0,
            replied=True,
        ),
    )


def happened(
    customer: str, kind: EventKind, at: datetime, *, score: int | None = None, channel: str = "rest"
) -> ArchiveEvent:
    return ArchiveEvent(
        id=f"{customer}:{kind.value}:{at.isoformat()}",
        kind=kind,
        conversation=conversation_key(channel, customer),
        channel=channel,
        customer=customer,
        at=at,
        agent=None if kind in (EventKind.ESCALATED, EventKind.TIMED_OUT) else "Dana",
        score=score,
    )


def called(
    customer: str,
    at: datetime,
    tool: str,
    latency_ms: float,
    *,
    outcome: str = "ok",
    status: int | None = 200,
    number: int = 0,
) -> ArchiveEvent:
    return ArchiveEvent(
        id=f"{customer}:{at.isoformat()}:call:{number}",
        kind=EventKind.TOOL_CALL,
        conversation=conversation_key("rest", customer),
        channel="rest",
        customer=customer,
        at=at,
        call=ToolCallRecord(
            tool=tool, arguments={}, outcome=outcome, status=status, latency_ms=latency_ms
        ),
    )


def known_week() -> list[ArchiveEvent]:
    t = NOW - 4 * DAY
    dan, eve = t + timedelta(hours=1), t + timedelta(hours=2)
    return [
        turn("ann", t - 3 * DAY),  # before the period, same topic as her contact in it
        turn("ann", t),  # assumed, and a repeat
        turn("bob", t, channel="sms"),
        happened("bob", EventKind.SATISFACTION, t + timedelta(minutes=1), score=5, channel="sms"),
        turn("cid", t, topic="Returns"),
        happened("cid", EventKind.SATISFACTION, t + timedelta(minutes=1), score=2),
        turn("dan", dan, action=Action.ESCALATE, reason=Reason.HUMAN_REQUESTED, topic=None),
        happened("dan", EventKind.ESCALATED, dan),
        happened("dan", EventKind.CLAIMED, dan + timedelta(seconds=60)),
        happened("dan", EventKind.AGENT_REPLY, dan + timedelta(seconds=90)),
        happened("dan", EventKind.RESOLVED, dan + timedelta(seconds=300)),
        turn(
            "eve",
            eve,
            action=Action.ESCALATE,
            reason=Reason.LOW_CONFIDENCE,
            text="  What is the meaning of life? ",
            topic=None,
        ),
        happened("eve", EventKind.ESCALATED, eve),
        happened("eve", EventKind.TIMED_OUT, eve + timedelta(hours=1)),
        turn("fay", NOW - timedelta(hours=1)),  # pending: too early to assume
        # Tool calls: one before the period; in it 20 lookups and a refusal by the shop (an
        # answer: not a failure), and two failed returns.
        called("ann", t - 3 * DAY, "get_order", 900.0),
        *(called("ann", t, "get_order", float(ms), number=ms) for ms in range(10, 210, 10)),
        called("bob", t, "get_order", 30.0, outcome="rejected", status=404, number=99),
        called("cid", t, "start_return", 1000.0, outcome="timeout", status=None),
        called("cid", t + timedelta(minutes=5), "start_return", 12.0, outcome="failed", status=503),
    ]


@pytest.fixture
async def archive(archive_url: str, tmp_path: Path) -> AsyncIterator[ArchiveDatabase]:
    database = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(database)
    await database.write(known_week())
    yield database
    await database.close()


async def test_the_report_counts_a_known_week(archive: ArchiveDatabase) -> None:
    report = await build_report(
        archive, since=7 * DAY - timedelta(hours=1), window=WINDOW, repeat_window=7 * DAY, now=NOW
    )
    assert report.contacts == 6 and report.messages == 6
    assert report.outcomes == {
        "confirmed": 1,
        "assumed": 1,
        "resolved_by_agent": 1,
        "abandoned": 1,
        "escalated": 0,
        "unresolved": 1,
        "pending": 1,
    }
    assert (report.automation["confirmed"].count, report.automation["assumed"].count) == (1, 1)
    assert report.automation["confirmed"].rate == round(1 / 6, 4)
    assert {reason: rate.count for reason, rate in report.escalations.items()} == {
        "human_requested": 1,
        "low_confidence": 1,
    }
    assert report.time_to_claim_seconds.p50 == 60.0
    assert report.time_to_resolve_seconds.p95 == 300.0
    assert report.agents == {"Dana": {"claimed": 1, "replies": 1, "resolved": 1}}
    assert report.satisfaction.answers == 2 and report.satisfaction.average == 3.5
    assert report.repeat_contacts.count == 1
    assert report.first_response_seconds["sms"].p50 == 0.25
    assert report.top_topics[0] == ("Descaling", 3)
    assert report.top_unanswered == [("what is the meaning of life?", 1)]
    assert sum(sum(day.values()) for day in report.volume.values()) == 6


async def test_the_report_counts_the_tool_calls_by_tool_and_outcome(
    archive: ArchiveDatabase,
) -> None:
    report = await build_report(
        archive, since=7 * DAY - timedelta(hours=1), window=WINDOW, repeat_window=7 * DAY, now=NOW
    )
    calls = report.tool_calls
    assert (calls.calls, calls.failed) == (23, 2)  # the call before the period not counted
    assert list(calls.by_tool) == ["get_order", "start_return"]  # most called first
    lookups, returns = calls.by_tool["get_order"], calls.by_tool["start_return"]
    assert (lookups.calls, lookups.outcomes, lookups.failed) == (21, {"ok": 20, "rejected": 1}, 0)
    assert lookups.latency_ms.count == 21 and lookups.latency_ms.p50 == 100.0
    assert lookups.latency_ms.p95 == 190.0
    assert (returns.outcomes, returns.failed) == ({"timeout": 1, "failed": 1}, 2)
    assert [(f.tool, f.outcome, f.status) for f in calls.failures] == [
        ("start_return", "failed", 503),  # newest first
        ("start_return", "timeout", None),
    ]
    assert calls.failures[0].conversation == conversation_key("rest", "cid")


# -- the command and the page ----------------------------------------------------------------


def report_config(tmp_path: Path, archive: ArchiveDatabase) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"data_dir: {tmp_path}\narchive:\n  database_url: {archive.url}\n")
    return config


async def test_gateway_report_prints_json_and_writes_html(
    archive: ArchiveDatabase, tmp_path: Path
) -> None:
    config, html = report_config(tmp_path, archive), tmp_path / "report.html"
    runner = CliRunner()
    args = ["report", "--since", "30d", "--json", "--html", str(html), "--config", str(config)]
    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    figures = Report.model_validate(json.loads(result.stdout))
    assert figures.contacts >= 6  # the period ends now, not at NOW
    page = html.read_text()
    assert page.count("<svg") == 5 and "Volume by day and channel" in page
    tools = page.split('<h2 id="tool-calls">Tool calls</h2>', 1)[1]
    # 30 days: the call before the known week's period counts too.
    assert figures.tool_calls.calls == 24 and "24 calls to your API, 2 failed" in tools
    assert "<td>get_order</td>" in tools and "ok 21, rejected 1" in tools
    assert '<td>start_return</td><td>failed</td><td class="n">503</td>' in tools
    printed = await asyncio.to_thread(
        runner.invoke, app, ["report", "--since", "30d", "--config", str(config)]
    )
    assert printed.exit_code == 0, printed.output
    assert "tool get_order" in printed.output and "ok 21, rejected 1" in printed.output
    bad = await asyncio.to_thread(runner.invoke, app, ["report", "--since", "soon"])
    assert bad.exit_code == 2 and "a period like" in bad.output


async def test_the_admin_report_needs_the_token_and_is_off_without_one(
    archive: ArchiveDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def config() -> GatewayConfig:
        return GatewayConfig(data_dir=tmp_path, archive={"database_url": archive.url})

    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    async with Gateway.open(config(), embedded=True) as off:
        assert (await off.http.get("/admin/report")).status == 404
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    async with Gateway.open(config(), embedded=True) as gw:
        assert (await gw.http.get("/admin/report")).status == 401
        assert (await gw.http.get("/admin/report?token=wrong")).status == 401
        bad = await gw.http.get(f"/admin/report?token={TOKEN}&since=forever")
        assert bad.status == 400 and "a period like" in await bad.text()
        page = await gw.http.get(
            "/admin/report?since=30d", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert page.status == 200 and page.content_type == "text/html"
        assert (await page.text()).count("<svg") == 5
        assert "script-src" not in page.headers["Content-Security-Policy"]
        figures = await gw.http.get(f"/admin/report?token={TOKEN}&since=30d&format=json")
        assert Report.model_validate(await figures.json()).contacts >= 6


async def test_the_admin_report_of_an_archive_not_migrated_says_so_with_503(
    archive_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that skipped `gateway db upgrade` (or stopped at an older revision): the
    page names the fix instead of failing in a query; once migrated, it is served."""
    database = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(database, "0001")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    config = GatewayConfig(data_dir=tmp_path, archive={"database_url": database.url})
    async with Gateway.open(config, embedded=True) as gw:
        behind = await gw.http.get(f"/admin/report?token={TOKEN}")
        assert behind.status == 503 and behind.headers["Retry-After"] == "60"
        text = await behind.text()
        assert "revision 0001" in text and "gateway db upgrade" in text
        await upgrade(database)
        assert (await gw.http.get(f"/admin/report?token={TOKEN}")).status == 200
    await database.close()
