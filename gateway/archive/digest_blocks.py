"""The weekly digest as a Slack Block Kit message (https://docs.slack.dev/block-kit/), and the
plain text Slack shows in notifications and where blocks cannot be drawn."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.archive.digest import Digest, Figure, Unit

SHOWN_DRAFTS = 5
QUESTION_CHARS = 200  # of one customer's question: the list stays a glance, not a transcript
NOTHING = "n/a"


def digest_blocks(digest: Digest, zone: ZoneInfo) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _title(digest, zone)}},
        {  # seven fields: a section holds ten at most
            "type": "section",
            "fields": [_mrkdwn(_field(figure, digest)) for figure in digest.figures],
        },
        {"type": "divider"},
        _section(f"*Top unanswered questions*\n{_unanswered(digest)}"),
    ]
    if digest.drafts is not None:
        blocks.append(_section(_drafts(digest.drafts)))
    link = (
        f"<{digest.report_url}|The full report> (the last 7 days)"
        if digest.report_url
        else "The full report: `gateway report --since 7d`, or /admin/report on the web process"
    )
    blocks.append({"type": "context", "elements": [_mrkdwn(link)]})
    return blocks


def digest_text(digest: Digest, zone: ZoneInfo) -> str:
    """The notification line: the period and its first four figures."""
    shown = "; ".join(
        f"{figure.name} {_value(figure.unit, figure.this_week)}" for figure in digest.figures[:4]
    )
    return f"{_title(digest, zone)}. {shown}"


def _title(digest: Digest, zone: ZoneInfo) -> str:
    since, until = (moment.astimezone(zone) for moment in (digest.since, digest.until))
    return f"Support this week: {_day(since)} to {_day(until)}"


def _day(moment: datetime) -> str:
    return f"{moment:%a} {moment.day} {moment:%b}"


def _field(figure: Figure, digest: Digest) -> str:
    value = _value(figure.unit, figure.this_week)
    if figure.unit is Unit.SCORE and figure.this_week is not None:
        value += f" / 5 ({digest.satisfaction_answers} answers)"
    before = f"last week {_value(figure.unit, figure.week_before)}"
    change = _change(figure)
    return f"*{figure.name}*\n{value}  ({before}{', ' + change if change else ''})"


def _value(unit: Unit, value: float | None) -> str:
    if value is None:
        return NOTHING
    if unit is Unit.COUNT:
        return f"{value:,.0f}"
    if unit is Unit.RATE:
        return f"{value:.1%}"
    if unit is Unit.SCORE:
        return f"{value:.2f}"
    return _duration(value)


def _change(figure: Figure) -> str:
    """The change in counts and rates (a duration's or a score's reads well without it)."""
    now, before = figure.this_week, figure.week_before
    if now is None or before is None:
        return ""
    if figure.unit is Unit.COUNT:
        return f"{now - before:+,.0f}"
    if figure.unit is Unit.RATE:
        return f"{(now - before) * 100:+.1f} pts"
    return ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _unanswered(digest: Digest) -> str:
    if not digest.top_unanswered:
        return "_None this week._"
    return "\n".join(
        f"• “{_escape(_clip(question, QUESTION_CHARS))}” ({count})"
        for question, count in digest.top_unanswered
    )


def _drafts(drafts: list[str]) -> str:
    lines = [f"*Knowledge-base drafts waiting for review: {len(drafts)}*"]
    lines += [f"• {_escape(_clip(title, QUESTION_CHARS))}" for title in drafts[:SHOWN_DRAFTS]]
    if len(drafts) > SHOWN_DRAFTS:
        lines.append(f"… and {len(drafts) - SHOWN_DRAFTS} more")
    if drafts:
        lines.append("Review them with `gateway kb drafts`.")
    return "\n".join(lines)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """The three characters Slack mrkdwn reserves, in customers' words and draft titles
    (https://docs.slack.dev/messaging/formatting-message-text#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
