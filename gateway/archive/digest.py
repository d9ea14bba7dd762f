"""The weekly digest's figures: the report's key figures for a week against the week before.

Both weeks are `build_report` over seven days, each as it stood at its own end (so last week's
figures are the ones last week's digest showed: a contact still inside its resolution window
then was pending, not assumed). Nothing here counts rows itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel

from gateway.archive.database import ArchiveDatabase
from gateway.archive.report import Report, build_report

WEEK = timedelta(days=7)
TOP_UNANSWERED = 5


class Unit(StrEnum):
    COUNT = "count"
    RATE = "rate"  # a fraction of the week's contacts
    SECONDS = "seconds"
    SCORE = "score"  # satisfaction, 1 to 5


class Figure(BaseModel):
    name: str
    unit: Unit
    this_week: float | None  # None: nothing to measure (no escalation was claimed, no rating)
    week_before: float | None


class Digest(BaseModel):
    since: datetime
    until: datetime
    figures: list[Figure]
    satisfaction_answers: int
    top_unanswered: list[tuple[str, int]]  # the customers' questions the bot could not answer
    drafts: list[str] | None  # knowledge-base drafts waiting for review; None: no review folder
    report_url: str | None


async def build_digest(
    database: ArchiveDatabase,
    *,
    until: datetime,
    window: timedelta,
    repeat_window: timedelta,
    drafts: Sequence[str] | None,
    report_url: str | None,
) -> Digest:
    """The week that ends at `until`, against the one before it."""
    this_week = await build_report(
        database, since=WEEK, window=window, repeat_window=repeat_window, now=until
    )
    week_before = await build_report(
        database, since=WEEK, window=window, repeat_window=repeat_window, now=until - WEEK
    )
    return Digest(
        since=this_week.since,
        until=until,
        figures=[
            Figure(name=name, unit=unit, this_week=read(this_week), week_before=read(week_before))
            for name, unit, read in _KEY_FIGURES
        ],
        satisfaction_answers=this_week.satisfaction.answers,
        top_unanswered=this_week.top_unanswered[:TOP_UNANSWERED],
        drafts=list(drafts) if drafts is not None else None,
        report_url=report_url,
    )


def _escalation_rate(report: Report) -> float:
    escalated = sum(rate.count for rate in report.escalations.values())
    return round(escalated / report.contacts, 4) if report.contacts else 0.0


def _satisfaction(report: Report) -> float | None:
    return report.satisfaction.average if report.satisfaction.answers else None


_KEY_FIGURES: tuple[tuple[str, Unit, Callable[[Report], float | None]], ...] = (
    ("Conversations", Unit.COUNT, lambda report: float(report.contacts)),
    ("Resolved, confirmed", Unit.RATE, lambda report: report.automation["confirmed"].rate),
    ("Resolved, assumed", Unit.RATE, lambda report: report.automation["assumed"].rate),
    ("Escalated", Unit.RATE, _escalation_rate),
    ("First response p95", Unit.SECONDS, lambda report: report.first_response_all_seconds.p95),
    ("Time to claim p50", Unit.SECONDS, lambda report: report.time_to_claim_seconds.p50),
    ("Satisfaction", Unit.SCORE, _satisfaction),
)
