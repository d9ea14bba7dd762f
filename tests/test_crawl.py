"""`gateway kb crawl` and URL sources against a small help centre on a local aiohttp server.

The site: robots.txt (a Disallow, a Sitemap line), a sitemap index and its sitemap, pages
linked from a navigation menu, one page that changes between crawls, one that disappears
(404), one that is no longer linked, one that fails (500), a PDF, and a link to another site
(a second local server whose requests are counted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from typer.testing import CliRunner

from brain.config import CrawlConfig
from brain.crawl import crawl
from brain.embedder import DEFAULT_EMBEDDER, Embedder, load_embedder
from brain.knowledge import KnowledgeBase
from gateway.app.cli import app

USER_AGENT = "test-crawler/1.0 (+https://example.test/bot)"

PAGES = {
    "/help/": (
        "Help centre",
        "Welcome to the Kettle and Crane help centre. Here you find answers about orders, "
        "deliveries, refunds and your coffee subscription. Pick a topic from the menu to read "
        "the full article, or search for a keyword in the box at the top of every page.",
    ),
    "/help/refunds": (
        "Refunds",
        "You can return unopened coffee within 30 days of delivery and we refund the full "
        "price to your original payment method. Refunds take five to seven working days to "
        "reach your bank account once the parcel is back in our roastery in Leeds.",
    ),
    "/help/shipping": (
        "Shipping times",
        "Orders placed before noon leave our roastery the same day. Delivery in the United "
        "Kingdom takes one to two working days; deliveries to the European Union take three "
        "to five working days and are tracked from the moment the courier collects them.",
    ),
    "/help/old-page": (
        "Summer opening hours",
        "During the summer our tasting room in Leeds opens from nine in the morning until "
        "eight in the evening, every day of the week including public holidays, and the "
        "barista team runs free cupping sessions every Saturday afternoon at three.",
    ),
    "/help/seasonal": (
        "Christmas gift boxes",
        "Our Christmas gift boxes hold three bags of seasonal single-origin coffee, a "
        "ceramic mug and a handwritten card. Order them until the eighteenth of December "
        "for delivery before Christmas Eve anywhere in the United Kingdom.",
    ),
    "/help/flaky": (
        "Grinder settings",
        "Set the burr grinder to a medium-coarse setting for a French press and to a fine "
        "setting for espresso. Clean the burrs every two weeks with grinder tablets so old "
        "oils do not turn rancid and spoil the taste of fresh beans.",
    ),
    "/help/internal/notes": (
        "Internal notes",
        "Staff only: the discount override password is written on the whiteboard in the "
        "back office. This page must never be crawled because robots.txt disallows it, "
        "and no customer should ever read it in an answer from the support bot.",
    ),
}
CHANGED_REFUNDS = (
    "Refunds",
    "From March you can return unopened coffee within 60 days and choose between a refund "
    "and store credit. Store credit is added to your account at once; a refund to your card "
    "takes five to seven working days after the parcel is back in our roastery in Leeds.",
)


@dataclass
class Site:
    """What the site serves now, and every request it received (path, User-Agent)."""

    offsite_url: str = ""
    pages: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(PAGES))
    gone: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    unlinked: set[str] = field(default_factory=set)
    throttled: dict[str, int] = field(default_factory=dict)  # path -> 429s still to answer
    redirects: dict[str, str] = field(default_factory=dict)  # path -> where it redirects
    requests: list[tuple[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/robots.txt", self.robots)
        app.router.add_get("/sitemap_index.xml", self.sitemap_index)
        app.router.add_get("/sitemap-help.xml", self.sitemap)
        app.router.add_get("/help/brochure", self.pdf)
        app.router.add_get("/{path:.*}", self.page)
        app.middlewares.append(self.record)
        return app

    @web.middleware
    async def record(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.requests.append((request.path, request.headers.get("User-Agent", "")))
        return await handler(request)

    def requested(self, path: str) -> int:
        return sum(seen == path for seen, _ in self.requests)

    async def robots(self, request: web.Request) -> web.Response:
        lines = ["User-agent: *", "Disallow: /help/internal/", ""]
        lines.append(f"Sitemap: {request.url.origin()}/sitemap_index.xml")
        return web.Response(text="\n".join(lines))

    async def sitemap_index(self, request: web.Request) -> web.Response:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{request.url.origin()}/sitemap-help.xml</loc></sitemap>"
            "</sitemapindex>"
        )
        return web.Response(text=body, content_type="application/xml")

    async def sitemap(self, request: web.Request) -> web.Response:
        # The sitemap lists the pages the menu does not: the crawl needs both to find them all.
        listed = ["/help/shipping", "/help/internal/notes"]
        urls = "".join(f"<url><loc>{request.url.origin()}{path}</loc></url>" for path in listed)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
        )
        return web.Response(text=body, content_type="application/xml")

    async def pdf(self, request: web.Request) -> web.Response:
        return web.Response(body=b"%PDF-1.4 not a page", content_type="application/pdf")

    async def page(self, request: web.Request) -> web.Response:
        path = request.path
        if path in self.redirects:
            raise web.HTTPFound(self.redirects[path])
        if path in self.failing:
            raise web.HTTPInternalServerError()
        if self.throttled.get(path):
            self.throttled[path] -= 1
            raise web.HTTPTooManyRequests(headers={"Retry-After": "1"})
        if path in self.gone or path not in self.pages:
            raise web.HTTPNotFound()
        title, text = self.pages[path]
        menu = [p for p in self.pages if p not in self.unlinked and p != "/help/shipping"]
        links = "".join(f'<li><a href="{p}#top">{self.pages[p][0]}</a></li>' for p in menu)
        links += '<li><a href="brochure">Brochure (PDF)</a></li>'
        links += f'<li><a href="{self.offsite_url}">Our roastery blog</a></li>'
        html = (
            f"<!doctype html><html><head><title>{title} | Kettle and Crane</title></head><body>"
            f"<nav><ul>{links}</ul></nav>"
            f"<main><article><h1>{title}</h1><p>{text}</p></article></main>"
            "<footer>Kettle and Crane Ltd, Leeds</footer></body></html>"
        )
        return web.Response(text=html, content_type="text/html")


@pytest.fixture
async def site() -> AsyncIterator[tuple[Site, str, Site]]:
    """The help centre, its start URL, and an off-site server that must never be fetched."""
    offsite = Site()
    async with TestServer(offsite.app(), host="localhost") as other:
        help_site = Site(offsite_url=str(other.make_url("/blog/")))
        async with TestServer(help_site.app(), host="127.0.0.1") as server:
            yield help_site, str(server.make_url("/help/")), offsite


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(DEFAULT_EMBEDDER)


@pytest.fixture
def kb(tmp_path: Path, embedder: Embedder) -> Iterator[KnowledgeBase]:
    base = KnowledgeBase(
        tmp_path / "data", embedder=embedder, crawl=CrawlConfig(user_agent=USER_AGENT)
    )
    yield base
    base.close()


def stored_sources(kb: KnowledgeBase) -> set[str]:
    found = kb._chroma().get(include=["metadatas"])
    return {str(meta["source"]) for meta in found["metadatas"]}


def paths(urls: set[str], start: str) -> set[str]:
    origin = start.removesuffix("/help/")
    return {url.removeprefix(origin) for url in urls}


async def test_crawl_stores_the_sites_pages_and_search_names_the_page_url(
    kb: KnowledgeBase, site: tuple[Site, str, Site]
) -> None:
    help_site, start, offsite = site
    report = await asyncio.to_thread(kb.ingest, [start])

    expected = {"/help/", "/help/refunds", "/help/shipping", "/help/old-page", "/help/seasonal"}
    expected.add("/help/flaky")
    assert paths(stored_sources(kb), start) == expected
    assert report.added == len(expected)
    assert help_site.requested("/help/internal/notes") == 0  # robots.txt Disallow
    assert help_site.requested("/help/shipping") == 1  # found through the sitemap index
    assert offsite.requests == []  # an off-site link is never followed
    assert {agent for _, agent in help_site.requests} == {USER_AGENT}

    passages = await kb.search("How long until my refund reaches my bank?", k=3)
    assert passages[0].source == start + "refunds"
    assert passages[0].title == "Refunds"
    assert "footer" not in passages[0].text and "Leeds" in passages[0].text


async def test_recrawl_updates_changed_pages_and_removes_vanished_ones(
    kb: KnowledgeBase, site: tuple[Site, str, Site]
) -> None:
    help_site, start, _ = site
    await asyncio.to_thread(kb.ingest, [start])

    help_site.pages["/help/refunds"] = CHANGED_REFUNDS
    help_site.gone.add("/help/old-page")  # answers 404 now
    help_site.unlinked.add("/help/seasonal")  # still served, but nothing links to it
    help_site.failing.add("/help/flaky")  # a 500 this time: kept as it was
    assert kb.is_stale([start]) is False  # a crawled site is refreshed by ingest, not on start
    report = await asyncio.to_thread(kb.ingest, [start])

    assert (report.added, report.updated, report.removed) == (0, 1, 1)
    assert report.unchanged == 2  # the index and shipping: fetched, hashed, not re-embedded
    # The failed page might have been the one linking to the seasonal page: it stays for now.
    kept = {"/help/", "/help/refunds", "/help/shipping", "/help/flaky", "/help/seasonal"}
    assert paths(stored_sources(kb), start) == kept

    help_site.failing.clear()
    report = await asyncio.to_thread(kb.ingest, [start])
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 1, 4)
    assert paths(stored_sources(kb), start) == kept - {"/help/seasonal"}
    passage = (await kb.search("Can I get store credit instead of a refund?", k=1))[0]
    assert passage.source == start + "refunds"
    assert "store credit" in passage.text
    gone = await kb.search("When does the tasting room open in summer?", k=10)
    assert start + "old-page" not in {p.source for p in gone}


async def test_a_page_answering_429_is_fetched_again_after_its_retry_after(
    kb: KnowledgeBase, site: tuple[Site, str, Site]
) -> None:
    help_site, start, _ = site
    help_site.throttled["/help/refunds"] = 1
    started = time.monotonic()
    report = await asyncio.to_thread(kb.ingest, [start])
    assert time.monotonic() - started >= 1.0
    assert help_site.requested("/help/refunds") == 2
    assert start + "refunds" in stored_sources(kb)
    assert report.added == 6


async def test_a_crawl_cut_short_by_the_page_limit_removes_nothing(
    tmp_path: Path, embedder: Embedder, site: tuple[Site, str, Site]
) -> None:
    _, start, _ = site
    full = KnowledgeBase(tmp_path / "data", embedder=embedder)
    await asyncio.to_thread(full.ingest, [start])
    full.close()

    limited = KnowledgeBase(tmp_path / "data", embedder=embedder, crawl=CrawlConfig(max_pages=2))
    report = await asyncio.to_thread(limited.ingest, [start])
    assert report.removed == 0 and report.unchanged == 2
    assert len(stored_sources(limited)) == 6
    limited.close()


async def test_kb_crawl_command_reports_what_it_stored(
    tmp_path: Path,
    site: tuple[Site, str, Site],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, start, _ = site
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/gateway.yaml here: embedded defaults
    args = ["kb", "crawl", start, "--max-pages", "3", "--concurrency", "2"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert "3 pages" in result.output and "3 added" in result.output

    bad = await asyncio.to_thread(CliRunner().invoke, app, ["kb", "crawl", "ftp://example.com/"])
    assert bad.exit_code == 2
    assert "http or https" in bad.output


@pytest.mark.parametrize("source", ["file:///etc/", "ftp://example.com/help/", "s3://bucket/kb"])
def test_kb_ingest_of_a_url_that_is_not_http_is_a_clear_error(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["kb", "ingest", source])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "http or https" in said and source in said
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback


async def test_redirects_are_followed_only_inside_the_scope(site: tuple[Site, str, Site]) -> None:
    help_site, start, offsite = site
    help_site.redirects["/help/shipping"] = f"{help_site.offsite_url}moved"  # another site
    help_site.redirects["/help/seasonal"] = "/elsewhere/on-this-host"  # out of the folder
    help_site.redirects["/help/old-page"] = "/help/flaky"  # in the scope: followed

    result = await crawl(start, CrawlConfig(user_agent=USER_AGENT))

    assert offsite.requests == []
    assert help_site.requested("/elsewhere/on-this-host") == 0
    found = paths({page.url for page in result.pages}, start)
    assert "/help/shipping" not in found and "/help/seasonal" not in found
    assert "/help/flaky" in found and "/help/old-page" not in found
    assert not result.failed
