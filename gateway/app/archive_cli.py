"""`gateway db`, `gateway report`, `gateway digest` and `gateway erase`: the archive's commands
(registered on the `gateway` command in `gateway/app/cli.py`)."""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from gateway.app.settings import GatewayConfig
    from gateway.archive.database import ArchiveDatabase
    from gateway.archive.report import Report

db_app = typer.Typer(help="The conversation archive's database.", no_args_is_help=True)
console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Config file (default: $GATEWAY_CONFIG or config/gateway.yaml)."
    ),
]
_PERIOD = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_period(text: str) -> timedelta:
    """`30m`, `12h`, `7d`, `2w`."""
    match = _PERIOD.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{text!r}: a period like 30m, 12h, 7d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _settings(config: Path | None) -> GatewayConfig:
    from gateway.app.cli import _load

    settings = _load(config, quiet=True)
    if not settings.archive.enabled:
        console.print("[red]The archive is off[/red] (archive.enabled: false)")
        raise typer.Exit(2)
    return settings


async def _with_archive(settings: GatewayConfig) -> ArchiveDatabase:
    from gateway.app.runtime import open_archive

    return open_archive(settings)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Migrate the archive's schema to the newest revision (the `release` process runs this)."""
    from gateway.archive.migrate import current, upgrade

    async def run() -> tuple[str | None, str | None]:
        database = await _with_archive(_settings(config))
        try:
            await upgrade(database)
            return await current(database)
        finally:
            await database.close()

    revision, _head = asyncio.run(run())
    console.print(f"Archive schema at revision [bold]{revision}[/bold]")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Print the archive's schema revision; exit 1 when it is behind (run `gateway db upgrade`)."""
    from gateway.archive.migrate import current

    async def run() -> tuple[str | None, str | None]:
        database = await _with_archive(_settings(config))
        try:
            return await current(database)
        finally:
            await database.close()

    revision, head = asyncio.run(run())
    console.print(f"revision {revision or 'none'}, newest {head}")
    if revision != head:
        raise typer.Exit(1)


def report(
    since: Annotated[str, typer.Option(help="The period: 30m, 12h, 7d, 2w.")] = "7d",
    html: Annotated[Path | None, typer.Option(help="Write the report as HTML here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """The operator's report from the archive: volume, automation, escalations, wait times."""
    from gateway.archive.render import render_html

    settings = _settings(config)
    figures = asyncio.run(build(settings, parse_period(since)))
    if html is not None:
        html.write_text(render_html(figures), encoding="utf-8")
        console.print(f"Report written to [bold]{html}[/bold]")
    if as_json:
        sys.stdout.write(figures.model_dump_json(indent=2) + "\n")
    elif html is None:
        _print(figures)


async def build(settings: GatewayConfig, since: timedelta) -> Report:
    from gateway.app.runtime import batch_embed, open_knowledge, topic_namer
    from gateway.archive.report import build_report

    database = await _upgraded_archive(settings)
    knowledge = open_knowledge(settings)
    try:
        return await build_report(
            database,
            since=since,
            window=timedelta(seconds=settings.archive.resolution_window),
            repeat_window=timedelta(seconds=settings.archive.repeat_window),
            embed=batch_embed(knowledge),
            topic_similarity=settings.archive.topic_similarity,
            name_topics=topic_namer(settings),
        )
    finally:
        knowledge.close()
        await database.close()


async def _upgraded_archive(settings: GatewayConfig) -> ArchiveDatabase:
    """The archive, refused (exit 2) when its schema is behind."""
    from gateway.archive.migrate import current

    database = await _with_archive(settings)
    revision, head = await current(database)
    if revision != head:
        await database.close()
        console.print(f"[red]The archive is at revision {revision}[/red]: run `gateway db upgrade`")
        raise typer.Exit(2)
    return database


def _print(figures: Report) -> None:
    from rich.table import Table

    table = Table(title=f"Since {figures.since:%Y-%m-%d %H:%M} UTC", show_header=False)
    table.add_row("contacts", str(figures.contacts))
    table.add_row("messages", str(figures.messages))
    for name, rate in figures.automation.items():
        table.add_row(f"{name} resolutions", f"{rate.count} ({rate.rate:.1%})")
    for outcome, count in figures.outcomes.items():
        table.add_row(f"outcome: {outcome}", str(count))
    for reason, rate in figures.escalations.items():
        table.add_row(f"escalated: {reason}", f"{rate.count} ({rate.rate:.1%})")
    for channel, p in figures.first_response_seconds.items():
        table.add_row(f"first response {channel}", f"p50 {p.p50} s, p95 {p.p95} s")
    claim, resolve = figures.time_to_claim_seconds, figures.time_to_resolve_seconds
    table.add_row("time to claim", f"p50 {claim.p50} s, p95 {claim.p95} s")
    table.add_row("time to resolve", f"p50 {resolve.p50} s, p95 {resolve.p95} s")
    table.add_row(
        "satisfaction", f"{figures.satisfaction.average} ({figures.satisfaction.answers})"
    )
    repeats = figures.repeat_contacts
    table.add_row("repeat contacts", f"{repeats.count} ({repeats.rate:.1%})")
    calls = figures.tool_calls
    table.add_row("tool calls", f"{calls.calls} ({calls.failed} failed)")
    for tool, use in calls.by_tool.items():
        outcomes = ", ".join(f"{outcome} {count}" for outcome, count in use.outcomes.items())
        table.add_row(f"tool {tool}", f"{outcomes}; p95 {use.latency_ms.p95} ms")
    Console().print(table)


def erase(
    customer: Annotated[str, typer.Option(help="The customer's id (as the archive shows it).")],
    config: ConfigOption = None,
) -> None:
    """Delete one customer's data: the archive's rows, the conversation state, the transcripts."""
    from gateway.app.runtime import Runtime

    settings = _settings(config)

    async def run() -> list[str]:
        async with Runtime.open(settings) as runtime:
            assert runtime.archive is not None
            keys = await runtime.archive.erase_customer(customer)
            for key in keys:
                await runtime.store.forget(key)
            return keys

    keys = asyncio.run(run())
    console.print(f"Erased customer {customer!r}: {len(keys)} conversation(s)")
    for key in keys:
        console.print(f"  {key}", highlight=False)


def digest(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the Block Kit message as JSON; post nothing.")
    ] = False,
    post: Annotated[
        bool, typer.Option("--post", help="Post it to the digest's Slack channel now.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """The weekly digest of the last 7 days (the worker posts it on `digest:`'s schedule)."""
    import json
    from zoneinfo import ZoneInfo

    from adapters.slack import web_client
    from gateway.app.digest import SlackDigestPoster, composer
    from gateway.archive.digest_blocks import digest_blocks, digest_text
    from gateway.message import utcnow

    if dry_run == post:
        console.print("[red]Say --dry-run or --post[/red]")
        raise typer.Exit(2)
    settings = _settings(config)
    channel = settings.digest_channel
    if post and (channel is None or settings.channels.slack.bot_token is None):
        console.print(
            "[red]Nowhere to post it[/red]: set digest.channel (or handoff.escalation_channel) "
            "and SLACK_BOT_TOKEN"
        )
        raise typer.Exit(2)
    zone = ZoneInfo(settings.digest.timezone)

    async def run() -> tuple[str, list[dict[str, object]]]:
        database = await _upgraded_archive(settings)
        try:
            week = await composer(settings, database)(utcnow())
        finally:
            await database.close()
        text, blocks = digest_text(week, zone), digest_blocks(week, zone)
        if post:
            assert channel is not None
            await SlackDigestPoster(web_client(settings.channels.slack)).post(channel, text, blocks)
        return text, blocks

    text, blocks = asyncio.run(run())
    if dry_run:
        message = {"channel": channel, "text": text, "blocks": blocks}
        sys.stdout.write(json.dumps(message, indent=2, ensure_ascii=False) + "\n")
    else:
        console.print(f"Digest posted to [bold]{channel}[/bold]: {text}", highlight=False)
