"""The `gateway` command: run the process types, manage the knowledge base, ask, check."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from pydantic import BaseModel, SecretStr
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from adapters import CHANNELS
from adapters.base import CheckFailed, CredentialCheck
from gateway.app.archive_cli import db_app, digest, erase, report
from gateway.app.drafts_cli import drafts_app
from gateway.app.settings import GatewayConfig, load_config
from gateway.config import ConfigError
from gateway.logs import configure_logging
from gateway.message import TurnResult

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.app.scenarios.model import Suite
    from gateway.app.scenarios.runner import CaseResult

app = typer.Typer(help="Support gateway: answers customers on every channel.", no_args_is_help=True)
kb_app = typer.Typer(help="Manage the knowledge base.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
kb_app.add_typer(drafts_app, name="drafts")
app.add_typer(db_app, name="db")
app.command()(report)
app.command()(erase)
app.command()(digest)

console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Config file (default: $GATEWAY_CONFIG or config/gateway.yaml)."
    ),
]


def _load(path: Path | None, *, quiet: bool = False) -> GatewayConfig:
    try:
        config = load_config(path)
    except ConfigError as error:
        console.print(f"[red]Config error[/red] {error}")
        raise typer.Exit(2) from None
    secrets = list(_secret_values(config))
    configure_logging("warning" if quiet else config.logging.level, config.logging.format, secrets)
    return config


def _secret_values(section: BaseModel) -> Iterator[str]:
    """Every secret in the config (API token, channel tokens, ...), for the log redactor."""
    for value in section.__dict__.values():
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from _secret_values(value)


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Everything in one process: web, worker and connectors; ingests the KB when stale."""
    from gateway.app.processes import run

    settings = _load(config)
    console.print(
        f"Web chat: [bold]http://localhost:{settings.server.port}/[/bold]  (Ctrl+C stops)"
    )
    asyncio.run(run(settings, http=True, worker=True, connectors=True, ingest=True))


@app.command()
def web(config: ConfigOption = None) -> None:
    """The `web` process type: webhooks, web chat, health and metrics."""
    from gateway.app.processes import run

    asyncio.run(run(_load(config), http=True, worker=False))


@app.command()
def worker(config: ConfigOption = None) -> None:
    """The `worker` process type: pipeline consumers on the bus (needs REDIS_URL to scale out)."""
    from gateway.app.processes import run

    settings = _load(config)
    if not settings.redis_url:
        console.print("[yellow]No REDIS_URL: a lone worker has no web process to feed it.[/yellow]")
    asyncio.run(run(settings, http=False, worker=True))


@app.command()
def connectors(config: ConfigOption = None) -> None:
    """The `connectors` process type: Telegram polling, the Discord gateway, ... (run one)."""
    from gateway.app.processes import run

    settings = _load(config)
    if not settings.redis_url:
        console.print("[yellow]No REDIS_URL: connectors have no worker to feed.[/yellow]")
    asyncio.run(run(settings, http=False, worker=False, connectors=True))


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[
        list[str] | None, typer.Argument(help="Folders, files or URLs; default: knowledge.sources.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Ingest Markdown, MDX, text and HTML files and websites; unchanged ones are skipped."""
    settings = _load(config)
    sources = paths or settings.knowledge.sources
    if not sources:
        console.print("[red]Nothing to ingest:[/red] give a PATH or set knowledge.sources.")
        raise typer.Exit(2)
    from brain.crawl import is_url

    other = [source for source in sources if "://" in source and not is_url(source)]
    if other:
        console.print(
            f"[red]Not a file, folder or web address:[/red] {', '.join(other)} "
            "(give a path, or an http or https URL)"
        )
        raise typer.Exit(2)
    missing = [path for path in sources if "://" not in path and not Path(path).exists()]
    if missing:
        console.print(f"[red]No such file or folder:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    _ingest_with_progress(settings, sources)


@kb_app.command("crawl")
def kb_crawl(
    url: Annotated[str, typer.Argument(help="Start page; the pages under its folder are crawled.")],
    max_pages: Annotated[
        int | None, typer.Option(min=1, help="Pages at most (default: knowledge.crawl.max_pages).")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=32, help="Requests at once (default: knowledge.crawl.concurrency)"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Crawl a website (sitemap and links, robots.txt honoured) into the knowledge base.

    Unchanged pages are skipped; pages that are gone (404, 410) or no longer linked are removed.
    """
    from brain.crawl import is_url

    settings = _load(config)
    if not is_url(url):
        console.print(f"[red]Not a web address:[/red] {url} (give an http or https URL)")
        raise typer.Exit(2)
    options = {"max_pages": max_pages, "concurrency": concurrency}
    crawl = settings.knowledge.crawl.model_copy(
        update={name: value for name, value in options.items() if value is not None}
    )
    knowledge = settings.knowledge.model_copy(update={"crawl": crawl})
    _ingest_with_progress(settings.model_copy(update={"knowledge": knowledge}), [url])


def _ingest_with_progress(settings: GatewayConfig, sources: list[str]) -> None:
    from gateway.app.runtime import open_knowledge

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    crawled = 0
    knowledge = open_knowledge(settings)
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("Ingesting", total=None)
            crawling: TaskID | None = None

            def on_crawl(url: str, fetched: int, found: int) -> None:
                nonlocal crawling, crawled
                crawling = crawling if crawling is not None else progress.add_task("Crawling")
                crawled += 1
                description = f"Crawling {url[-40:]}"
                progress.update(crawling, completed=fetched, total=found, description=description)

            def on_progress(path: str, done: int, total: int) -> None:
                name = Path(path).name or path
                progress.update(
                    task, completed=done, total=total, description=f"Ingesting {name[:40]}"
                )

            report = knowledge.ingest(sources, on_progress=on_progress, on_crawl=on_crawl)
            progress.update(task, description="Ingested")
    finally:
        knowledge.close()
    console.print(
        (f"{crawled} pages crawled; " if crawled else "")
        + f"{report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged; {report.chunks} chunks in {report.seconds:.1f}s"
    )


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument(help="A customer's question, as they would send it.")],
    k: Annotated[int, typer.Option("--k", min=1, max=50, help="Pages to return.")] = 5,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print [{"source", "title", "score"}, ...].')
    ] = False,
    config: ConfigOption = None,
) -> None:
    """What retrieval returns for a question: one passage per page, best first, with its score
    (the cosine similarity the answerers' confidence threshold reads) and the retrievers that
    ranked its page. The question is cleaned as the answerer cleans a message."""
    from brain.query import clean
    from gateway.app.runtime import open_knowledge

    settings = _load(config, quiet=True)
    knowledge = open_knowledge(settings)
    searched = clean(query)
    try:
        if not knowledge.count():
            console.print("[red]The knowledge base is empty:[/red] run `gateway kb ingest`.")
            raise typer.Exit(1)
        passages = asyncio.run(knowledge.search(searched, k=k))
    finally:
        knowledge.close()
    if as_json:
        found = [{"source": p.source, "title": p.title, "score": p.score} for p in passages]
        sys.stdout.write(json.dumps(found, indent=2, ensure_ascii=False) + "\n")
        return
    if searched != query.strip():
        console.print(Text(f"searched: {searched}", style="dim"))
    table = Table("#", "source", "title", "heading", "score", "found by")
    for rank, passage in enumerate(passages, start=1):
        # The documents' own words, never read as markup.
        table.add_row(
            str(rank),
            Text(passage.source),
            Text(passage.title),
            Text(passage.heading),
            f"{passage.score:.2f}",
            " + ".join(passage.found_by),
        )
    console.print(table)


@app.command()
def ask(
    text: Annotated[str, typer.Argument(help="The customer's message.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the REST answer as JSON.")] = False,
    conversation: Annotated[
        str | None, typer.Option(help="Conversation id (default: new).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Send one message through the pipeline, in process, and print the answer."""
    from adapters.rest import answer_body

    settings = _load(config, quiet=True)
    conversation_id = conversation or f"cli-{uuid.uuid4().hex[:8]}"
    body = answer_body(conversation_id, asyncio.run(_ask(settings, conversation_id, text)))
    if as_json:
        sys.stdout.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        return
    decision = body["decision"]
    for reply in body["replies"]:
        console.print(reply["text"], highlight=False, soft_wrap=True)
    console.print(
        f"[dim]{decision['action']} ({decision['reason'] or 'answered'}), "
        f"confidence {decision['confidence']:.2f}, {body['latency_ms']:.0f} ms[/dim]"
    )
    for source in decision["sources"]:
        console.print(f"[dim]  source: {source['title']} ({source['source']})[/dim]")


async def _ask(settings: GatewayConfig, conversation_id: str, text: str) -> TurnResult:
    from gateway.app.runtime import Runtime
    from gateway.message import Inbound, conversation_key

    async with Runtime.open(settings, embedded=True) as runtime:
        await runtime.ingest_if_stale()
        message = Inbound(
            channel="rest",
            conversation=conversation_key("rest", conversation_id),
            sender="cli",
            text=text,
            provider_message_id=uuid.uuid4().hex,
        )
        return await runtime.pipeline.handle(message)


@app.command("test")
def scenario_test(
    paths: Annotated[list[Path], typer.Argument(help="Scenario files, or folders of them.")],
    repeat: Annotated[
        int, typer.Option(min=1, help="Runs per case; a case passes only if all pass (pass^k).")
    ] = 1,
    as_json: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")
    ] = None,
    junit: Annotated[
        Path | None, typer.Option(help="Also write JUnit XML (for CI systems) to this file.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Cases run at once.")] = 4,
    config: ConfigOption = None,
) -> None:
    """Run scenario tests through the real pipeline, in process: a recording channel instead
    of the providers, escalations recorded, never sent to agents. Exits 1 when a case fails."""
    from gateway.app.scenarios import report
    from gateway.app.scenarios.model import ScenarioError, load_all

    settings = _load(config, quiet=True)
    try:
        suites = load_all(paths, channels=list(CHANNELS), tools=settings.tools)
    except ScenarioError as error:
        console.print(f"[red]Scenario error[/red] {Text(str(error))}")
        raise typer.Exit(2) from None
    results, answerer = asyncio.run(_run_scenarios(settings, suites, repeat, concurrency))
    report.print_report(console, results, answerer=answerer, repeat=repeat)
    if as_json is not None:
        report.write_json(as_json, results, answerer=answerer, repeat=repeat)
    if junit is not None:
        report.write_junit(junit, results)
    if not all(result.passed for result in results):
        raise typer.Exit(1)


async def _run_scenarios(
    settings: GatewayConfig, suites: list[Suite], repeat: int, concurrency: int
) -> tuple[list[CaseResult], str]:
    from gateway.app.scenarios.runner import open_runner

    total = sum(len(suite.cases) for suite in suites) * repeat
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("Opening the gateway", total=total)
        async with open_runner(settings) as runner:
            progress.update(task, description="Running scenarios")
            results = await runner.run(
                suites,
                repeat=repeat,
                concurrency=concurrency,
                on_run=lambda case: progress.advance(task),
            )
            return results, runner.answerer


@app.command()
def check(
    config: ConfigOption = None,
    within: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.1, help="Seconds each check (Redis, Chroma, a provider) has."
        ),
    ] = 5.0,
) -> None:
    """Validate the config, reach Redis and Chroma, and try each enabled channel's credentials
    with its provider; exit non-zero with the reason (a warning alone exits 0)."""
    settings = _load(config, quiet=True)
    results = asyncio.run(_check(settings, within))
    secrets = [value for value in _secret_values(settings) if value]
    table = Table("check", "status", "detail")
    styles = {"ok": "green", "warning": "yellow", "failed": "red"}
    for name, status, detail in results:
        for value in secrets:  # an SDK's error text may quote a URL with a token in it
            detail = detail.replace(value, "***")
        # A server's words, never read as markup.
        table.add_row(name, Text(status, style=styles[status]), Text(detail))
    console.print(table)
    if any(status == "failed" for _, status, _ in results):
        raise typer.Exit(1)


CheckRow = tuple[str, Literal["ok", "warning", "failed"], str]


async def _check(settings: GatewayConfig, within: float) -> list[CheckRow]:
    from gateway.app.runtime import open_knowledge
    from gateway.redis_client import connect_redis

    results: list[CheckRow] = [("config", "ok", "valid")]
    if settings.redis_url:
        redis = connect_redis(settings.redis_url)
        try:
            await asyncio.wait_for(redis.ping(), within)
            results.append(("redis", "ok", "reachable"))
            results.append(await _redis_persistence(redis))
        except Exception as error:
            results.append(("redis", "failed", f"{type(error).__name__}: {error}"))
        finally:
            await redis.aclose()
    else:
        results.append(("redis", "ok", "not configured: in-process bus and store"))
    knowledge = open_knowledge(settings)
    where = settings.knowledge.chroma_url or f"embedded in {settings.data_dir}"
    try:
        await asyncio.wait_for(knowledge.ping(), within)
        chunks = await asyncio.to_thread(knowledge.count)
        results.append(("chroma", "ok", f"{where}, {chunks} chunks"))
    except Exception as error:
        results.append(("chroma", "failed", f"{where}: {type(error).__name__}: {error}"))
    channels = await asyncio.gather(
        *(
            _check_channel(name, checks, within)
            for name, channel in CHANNELS.items()
            if (section := getattr(settings.channels, name)).enabled
            and (checks := channel.credential_checks(section))
        )
    )
    return results + channels


async def _redis_persistence(redis: Redis) -> CheckRow:
    """Messages acknowledged to providers live on the Redis stream: without AOF a restart loses
    them. A warning, not a failure: a throwaway Redis is fine for trying the gateway out."""
    from redis.exceptions import ResponseError

    try:  # managed Redis often disables or renames CONFIG; INFO says the same
        aof = (await redis.config_get("appendonly")).get("appendonly") in ("yes", b"yes")
    except ResponseError:
        try:
            aof = (await redis.info("persistence")).get("aof_enabled") == 1
        except ResponseError as error:
            return ("redis persistence", "warning", f"unknown ({error}): make sure AOF is on")
    if aof:
        return ("redis persistence", "ok", "appendonly yes")
    return (
        "redis persistence",
        "warning",
        "appendonly is off: a Redis restart loses queued messages (already acknowledged to "
        "providers), conversations and dedupe marks; set appendonly yes (README, Production)",
    )


async def _check_channel(name: str, checks: list[CredentialCheck], within: float) -> CheckRow:
    """A channel's row: its checks run at once, each given `within` seconds; every part's
    outcome, so one failure does not hide the state of the others."""
    outcomes = await asyncio.gather(*(_credential_outcome(check, within) for check in checks))
    detail = "; ".join(detail for _, detail in outcomes)
    return (name, "ok", detail) if all(ok for ok, _ in outcomes) else (name, "failed", detail)


async def _credential_outcome(check: CredentialCheck, within: float) -> tuple[bool, str]:
    label = f"{check.label}: " if check.label else ""
    try:
        return True, label + await asyncio.wait_for(check.run(), within)
    except CheckFailed as error:
        return False, f"{label}{error}"
    except Exception as error:
        return False, label + _failure(error, check.host, within)


def _failure(error: Exception, host: str, within: float) -> str:
    """A timeout or a connection failure, however deep an SDK wrapped it, against the host;
    any other error as its type and text."""
    causes: list[BaseException] = [error]
    while (cause := causes[-1].__cause__) is not None:
        causes.append(cause)
    if any(isinstance(cause, TimeoutError) for cause in causes):
        return f"no answer from {host} within {within:g} s"
    network = [cause for cause in causes if isinstance(cause, OSError)]
    if network:
        return f"cannot connect to {host}: {_network_reason(network[-1])}"
    return f"{type(error).__name__}: {error}"


def _network_reason(error: OSError) -> str:
    """`Connection refused`, `Name or service not known`, a rejected TLS certificate, ..."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error})"
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error)
