"""The report as one self-contained HTML page: figures in tables, charts as inline SVG drawn
by matplotlib (no script, no CDN: it opens offline and passes a strict CSP)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import AbstractContextManager

import jinja2
from matplotlib import rc_context
from matplotlib.figure import Figure

from gateway.archive.report import Report

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.archive", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
# What the page needs from a Content-Security-Policy: inline styles only (matplotlib's SVG
# carries a <style> element); nothing else loads.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
_WIDE, _NARROW = (8.0, 3.0), (4.6, 2.8)


def render_html(report: Report) -> str:
    charts = {
        "volume": _volume(report),
        "outcomes": _bars(
            "Outcomes (contacts)", list(report.outcomes), list(report.outcomes.values())
        ),
        "escalations": _bars(
            "Escalations by reason",
            list(report.escalations),
            [rate.count for rate in report.escalations.values()],
        ),
        "first_response": _first_response(report),
        "satisfaction": _bars(
            "Satisfaction answers by score",
            list(report.satisfaction.scores),
            list(report.satisfaction.scores.values()),
            horizontal=False,
        ),
    }
    return _TEMPLATES.get_template("report.html").render(report=report, charts=charts)


def _style() -> AbstractContextManager[None]:
    """Text stays text (searchable, small); ids are stable from one rendering to the next."""
    return rc_context({"svg.fonttype": "none", "svg.hashsalt": "gateway-report", "font.size": 9})


def _svg(figure: Figure, title: str) -> str:
    figure.suptitle(title, fontweight="bold")
    buffer = io.StringIO()
    with _style():
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # no XML prolog inside HTML


def _figure(size: tuple[float, float]) -> Figure:
    with _style():
        return Figure(figsize=size, layout="constrained")


def _volume(report: Report) -> str:
    figure = _figure(_WIDE)
    axes = figure.subplots()
    days = list(report.volume)
    channels = sorted({channel for counts in report.volume.values() for channel in counts})
    bottom = [0] * len(days)
    for channel in channels:
        counts = [report.volume[day].get(channel, 0) for day in days]
        axes.bar(days, counts, bottom=bottom, label=channel)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    if channels:
        axes.legend(loc="upper left", fontsize=8, ncols=min(len(channels), 4))
    axes.set_ylabel("contacts")
    axes.tick_params(axis="x", labelrotation=30)
    return _svg(figure, "Volume by day and channel")


def _bars(
    title: str, labels: Sequence[str], values: Sequence[int], *, horizontal: bool = True
) -> str:
    figure = _figure(_NARROW)
    axes = figure.subplots()
    if horizontal:
        axes.barh(list(labels)[::-1], list(values)[::-1], color="#4c72b0")
    else:
        axes.bar(list(labels), list(values), color="#55a868")
    return _svg(figure, title)


def _first_response(report: Report) -> str:
    figure = _figure(_NARROW)
    axes = figure.subplots()
    channels = list(report.first_response_seconds)
    positions = range(len(channels))
    for offset, (name, pick) in enumerate((("p50", 0), ("p95", 1))):
        values = [
            (p.p50 if pick == 0 else p.p95) or 0.0 for p in report.first_response_seconds.values()
        ]
        axes.bar([x + offset * 0.4 for x in positions], values, width=0.4, label=name)
    axes.set_xticks([x + 0.2 for x in positions], channels)
    axes.set_ylabel("seconds")
    if channels:
        axes.legend(fontsize=8)
    return _svg(figure, "First response time by channel")
