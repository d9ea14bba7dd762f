"""The report in a real browser (Debian's chromium through Playwright): `/admin/report` and the
file `gateway report --html` writes both render, show their five charts, and log no error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from typer.testing import CliRunner

from gateway.app.cli import app
from gateway.app.settings import GatewayConfig
from gateway.archive.database import ArchiveDatabase
from gateway.archive.migrate import upgrade
from tests.harness import Gateway
from tests.test_report import TOKEN, known_week
from tests.test_webchat_browser import CHROMIUM, CHROMIUM_FLAGS

CHARTS = ("volume", "outcomes", "escalations", "first_response", "satisfaction")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        await browser.close()


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[ArchiveDatabase]:
    database = ArchiveDatabase(f"sqlite+aiosqlite:///{tmp_path / 'archive.sqlite3'}")
    await upgrade(database)
    await database.write(known_week())
    yield database
    await database.close()


async def shows_the_report(page: Page, url: str) -> None:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = await page.goto(url)
    assert response is not None and response.ok
    for chart in CHARTS:
        svg = page.locator(f"#chart-{chart} svg")
        await expect(svg).to_be_visible()
        box = await svg.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
    await expect(page.locator("#chart-volume")).to_contain_text("Volume by day and channel")
    await expect(page.locator("#confirmed")).to_contain_text("confirmed resolutions")
    await expect(page.locator("#assumed")).to_contain_text("assumed resolutions")
    assert errors == []


async def test_the_admin_report_renders_its_charts_in_chromium(
    browser: Browser, archive: ArchiveDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    config = GatewayConfig(data_dir=tmp_path, archive={"database_url": archive.url})
    async with Gateway.open(config, embedded=True) as gw:
        page = await browser.new_page()
        await shows_the_report(
            page, str(gw.http.make_url(f"/admin/report?since=30d&token={TOKEN}"))
        )


async def test_the_html_file_of_gateway_report_shows_the_charts_in_chromium(
    browser: Browser, archive: ArchiveDatabase, tmp_path: Path
) -> None:
    config, html = tmp_path / "gateway.yaml", tmp_path / "report.html"
    config.write_text(f"data_dir: {tmp_path}\narchive:\n  database_url: {archive.url}\n")
    args = ["report", "--since", "30d", "--html", str(html), "--config", str(config)]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    page = await browser.new_page()
    await shows_the_report(page, html.as_uri())
