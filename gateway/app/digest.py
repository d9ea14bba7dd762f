"""The weekly digest's wiring: its figures from the archive, its drafts from the review folder,
posted to Slack with the bot token (`gateway/weekly.py` schedules it; `gateway digest` runs it
by hand)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import web_client
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.archive.database import ArchiveDatabase
from gateway.archive.digest import Digest, build_digest
from gateway.weekly import Compose, WeeklyDigest


class SlackDigestPoster:
    """`gateway.weekly.DigestPoster` with the Slack bot token."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client

    async def post(self, channel: str, text: str, blocks: list[dict[str, Any]]) -> None:
        await self._client.chat_postMessage(
            channel=channel, text=text, blocks=blocks, unfurl_links=False
        )


def open_weekly_digest(runtime: Runtime) -> WeeklyDigest | None:
    """The worker's weekly loop; None when `digest.enabled` is off (the config checked the
    rest: a channel, the bot token, the archive)."""
    config = runtime.config
    channel = config.digest_channel
    if not config.digest.enabled or runtime.archive is None or channel is None:
        return None
    return WeeklyDigest(
        config=config.digest,
        channel=channel,
        store=runtime.store,
        compose=composer(config, runtime.archive),
        poster=SlackDigestPoster(web_client(config.channels.slack)),
    )


def composer(config: GatewayConfig, archive: ArchiveDatabase) -> Compose:
    """The digest of the week up to a moment, with the archive's definitions."""

    async def compose(until: datetime) -> Digest:
        return await build_digest(
            archive,
            until=until,
            window=timedelta(seconds=config.archive.resolution_window),
            repeat_window=timedelta(seconds=config.archive.repeat_window),
            drafts=waiting_drafts(config.drafts_dir),
            report_url=report_url(config),
        )

    return compose


def waiting_drafts(folder: Path) -> list[str] | None:
    """The titles of the drafts waiting in `folder` (each Markdown file's first `# ` heading,
    else its name); None when there is no such folder (the section is left out)."""
    if not folder.is_dir():
        return None
    return [_title(path) for path in sorted(folder.glob("*.md"))]


def _title(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as lines:
        heading = next((line for line in lines if line.startswith("# ")), None)
    return heading[2:].strip() if heading else path.stem


def report_url(config: GatewayConfig) -> str | None:
    """`/admin/report` on the web process (the page asks for the admin token)."""
    base = config.digest.public_url
    return f"{str(base).rstrip('/')}/admin/report?since=7d" if base is not None else None
