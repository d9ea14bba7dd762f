"""`gateway kb drafts`: knowledge-base pages drafted from what agents answered, for review
(registered under `gateway kb` in `gateway/app/cli.py`; the drafts themselves are
`gateway/archive/drafts.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from gateway.app.archive_cli import ConfigOption, parse_period

if TYPE_CHECKING:
    from gateway.app.settings import GatewayConfig
    from gateway.archive.drafts import Built, DraftFolder

drafts_app = typer.Typer(
    help="Pages drafted from agents' answers to what the bot could not answer.",
    no_args_is_help=True,
)
console = Console(stderr=True)
T = TypeVar("T")
DraftId = Annotated[str, typer.Argument(help="The draft's id (`gateway kb drafts list`).")]


def _folder(config: Path | None) -> tuple[GatewayConfig, DraftFolder]:
    from gateway.app.cli import _load
    from gateway.archive.drafts import DraftFolder

    settings = _load(config, quiet=True)
    return settings, DraftFolder(settings.drafts_dir)


@drafts_app.command("build")
def build(
    since: Annotated[str, typer.Option(help="The period: 30m, 12h, 7d, 2w.")] = "7d",
    config: ConfigOption = None,
) -> None:
    """Draft a page for each question the bot could not answer and an agent did, one per
    question however many customers asked it; gaps already drafted or decided are skipped."""
    from gateway.app.archive_cli import _settings

    settings = _settings(config)
    built = asyncio.run(_build(settings, datetime.now(UTC) - parse_period(since)))
    for draft in built.written:
        title = escape(draft.title)
        console.print(f"drafted [bold]{draft.id}[/bold]: {title}", highlight=False, soft_wrap=True)
    console.print(
        f"{len(built.written)} draft(s) written to {settings.drafts_dir}; "
        f"{built.covered} answered question(s) already drafted, accepted or rejected",
        soft_wrap=True,
    )
    if built.left:
        console.print(f"{built.left} more left for the next build", soft_wrap=True)


async def _build(settings: GatewayConfig, since: datetime) -> Built:
    from gateway.app.archive_cli import _upgraded_archive
    from gateway.app.runtime import batch_embed, open_knowledge
    from gateway.archive.drafts import DraftFolder, build_drafts
    from gateway.archive.gaps import find_gaps

    database = await _upgraded_archive(settings)
    knowledge = open_knowledge(settings)
    try:
        gaps = await find_gaps(database, since)
        return await build_drafts(
            DraftFolder(settings.drafts_dir),
            gaps,
            batch_embed(knowledge),
            similarity=settings.archive.question_similarity,
        )
    finally:
        knowledge.close()
        await database.close()


@drafts_app.command("list")
def list_drafts(config: ConfigOption = None) -> None:
    """The drafts waiting for review."""
    _, folder = _folder(config)
    drafts = _or_exit(folder.drafts)
    if not drafts:
        console.print(f"No drafts waiting in {folder.path} (`gateway kb drafts build`)")
        return
    # The id whole on one line: it is what `show`, `accept` and `reject` are given.
    table = Table(Column("id", no_wrap=True), "title", "asked", "conversations", "created")
    for draft in drafts:
        table.add_row(
            draft.id,
            Text(draft.title),
            str(len(draft.questions)),
            str(len(draft.conversations)),
            f"{draft.created:%Y-%m-%d %H:%M}",
        )
    Console().print(table)


@drafts_app.command("show")
def show(draft_id: DraftId, config: ConfigOption = None) -> None:
    """A draft as it stands: the page, then what customers asked and where."""
    from gateway.archive.drafts import body

    _, folder = _folder(config)
    draft = _or_exit(lambda: folder.get(draft_id))
    out = Console()
    out.print(Text(f"{draft.id}  ({folder.path / draft.id}.md)", style="dim"))
    out.print(Markdown(body(draft)))


@drafts_app.command("accept")
def accept(draft_id: DraftId, config: ConfigOption = None) -> None:
    """Move the draft's page into the first knowledge folder of `knowledge.sources` and ingest
    it: the bot answers from it from now on."""
    from brain.crawl import is_url
    from gateway.app.runtime import open_knowledge

    settings, folder = _folder(config)
    folders = [Path(source) for source in settings.knowledge.sources if not is_url(source)]
    target = next((path for path in folders if path.is_dir()), None)
    if target is None:
        console.print(
            "[red]No knowledge folder to accept into:[/red] list one under knowledge.sources."
        )
        raise typer.Exit(2)
    page = _or_exit(lambda: folder.accept(draft_id, target))
    knowledge = open_knowledge(settings)
    try:
        report = knowledge.ingest([target])
    except Exception as error:  # the page is in place: the next ingest takes it
        console.print(
            f"[red]Accepted {draft_id} into {page}, but the ingest failed:[/red] "
            f"{escape(f'{type(error).__name__}: {error}')}; run `gateway kb ingest`"
        )
        raise typer.Exit(1) from None
    finally:
        knowledge.close()
    console.print(
        f"Accepted [bold]{draft_id}[/bold]: {page} ({report.added} page(s) added, "
        f"{report.chunks} chunk(s) embedded)"
    )


@drafts_app.command("reject")
def reject(draft_id: DraftId, config: ConfigOption = None) -> None:
    """Drop the draft; the same question is not drafted again."""
    _, folder = _folder(config)
    draft = _or_exit(lambda: folder.reject(draft_id))
    console.print(f"Rejected [bold]{draft.id}[/bold]: {escape(draft.title)}", highlight=False)


def _or_exit(step: Callable[[], T]) -> T:
    from gateway.archive.drafts import DraftError

    try:
        return step()
    except DraftError as error:
        console.print(f"[red]Draft error[/red] {Text(str(error))}")
        raise typer.Exit(1) from None
