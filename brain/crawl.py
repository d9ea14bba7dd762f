"""Crawl a help centre into knowledge pages: same site, sitemap and links, robots.txt honoured.

The crawl's scope is the start URL's folder on its host (``https://example.com/help/`` for
``https://example.com/help/start``): the sitemap (from robots.txt, else ``/sitemap.xml``;
sitemap indexes are followed) and the links of every fetched page seed it, and anything
outside the scope is never fetched. Each HTML page's main text and title come from
trafilatura; navigation, footers and boilerplate are left out. A 429 or 503 is retried after
its Retry-After; a robots.txt Crawl-delay means one request at a time. Pages that answer 404
or 410 are reported gone; time-outs and other errors are reported failed, so an incremental
re-crawl keeps what it had for them (and for pages only they might link to) rather than
dropping it.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp
import structlog
import trafilatura
import yaml
from lxml import etree
from selectolax.lexbor import LexborHTMLParser
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from brain.config import CrawlConfig

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[str, int, int], None]  # (url, pages fetched, URLs found)

HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
GONE: Final = frozenset({404, 410})
# "Slow down" answers, retried after the Retry-After they give (capped); others fail the page.
RETRIED: Final = frozenset({429, 503})
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 5
ATTEMPTS: Final = 3
MAX_RETRY_AFTER: Final = 30.0
MAX_CRAWL_DELAY: Final = 10.0
MAX_BYTES: Final = 5 * 1024 * 1024  # a help page is far smaller; anything bigger is not one
MAX_SITEMAPS: Final = 50
# Extensions that are never HTML pages: skipped without a request.
_NOT_PAGES: Final = frozenset(
    ".png .jpg .jpeg .gif .svg .webp .ico .pdf .zip .gz .tar .mp4 .mp3 .webm .css .js .json "
    ".xml .txt .woff .woff2 .ttf .dmg .exe".split()
)
_NOT_LINKS: Final = ("mailto:", "tel:", "javascript:", "data:")
_SITEMAP_NS: Final = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
# No DTDs, entities or network access for XML from a website.
_XML_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


class _RetryLater(Exception):
    def __init__(self, status: int, seconds: float) -> None:
        super().__init__(f"HTTP {status}, retry after {seconds:.1f} s")
        self.seconds = seconds


@dataclass(frozen=True, slots=True)
class Page:
    url: str
    title: str
    markdown: str  # the main text as Markdown, led by a front matter holding the title


@dataclass(slots=True)
class CrawlResult:
    """``complete`` is false when the page limit, a failed page or an unreadable robots.txt
    cut the crawl short: pages it did not reach are then not known to be gone."""

    root: str
    pages: list[Page] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    complete: bool = True


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def crawl_scope(url: str) -> str:
    """The folder of ``url`` on its host: every page under it is in scope."""
    parts = urlsplit(url)
    folder = parts.path[: parts.path.rfind("/") + 1] or "/"
    return f"{parts.scheme}://{parts.netloc.lower()}{folder}"


async def crawl(
    start_url: str, config: CrawlConfig, *, on_page: ProgressCallback | None = None
) -> CrawlResult:
    """Fetch up to ``config.max_pages`` pages of the site, ``config.concurrency`` at a time."""
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    headers = {"User-Agent": config.user_agent}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        return await _Crawler(session, start_url, config, on_page).run()


class _Crawler:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        start_url: str,
        config: CrawlConfig,
        on_page: ProgressCallback | None,
    ) -> None:
        self._session = session
        self._start = _normalise(start_url)
        self._config = config
        self._on_page = on_page
        self._result = CrawlResult(crawl_scope(self._start))
        self._robots = RobotFileParser()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._seen: set[str] = set()
        self._fetched = 0
        self._delay = 0.0  # robots.txt Crawl-delay: then one request at a time, this far apart

    async def run(self) -> CrawlResult:
        if not await self._read_robots():
            self._result.complete = False
            return self._result
        delay = self._robots.crawl_delay(self._config.user_agent)
        self._delay = min(float(delay or 0), MAX_CRAWL_DELAY)
        self._enqueue(self._start)
        for url in await self._sitemap_urls():
            self._enqueue(url)
        workers = [
            asyncio.create_task(self._work(), name=f"crawl:{n}")
            for n in range(1 if self._delay else self._config.concurrency)
        ]
        try:
            await self._queue.join()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        self._result.pages.sort(key=lambda page: page.url)
        # A page that failed may be the only one linking to others: "no longer linked" is
        # only known from a crawl where every page answered.
        self._result.complete = self._result.complete and not self._result.failed
        log.info(
            "crawl.done",
            root=self._result.root,
            pages=len(self._result.pages),
            gone=len(self._result.gone),
            failed=len(self._result.failed),
            complete=self._result.complete,
        )
        return self._result

    async def _read_robots(self) -> bool:
        """Load robots.txt; false when the site's robots.txt cannot be read (crawl nothing)."""
        url = urljoin(self._start, "/robots.txt")
        try:
            async with self._session.get(url) as response:
                body = await response.text(errors="replace") if response.status == 200 else ""
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("crawl.robots_unreachable", url=url, error=str(error))
            return False
        # RFC 9309 §2.3.1.3-4: robots.txt "unavailable" (4xx) allows everything; "unreachable"
        # (5xx) means assume everything is disallowed. https://www.rfc-editor.org/rfc/rfc9309
        if status >= 500:
            log.warning("crawl.robots_unreachable", url=url, status=status)
            return False
        self._robots.parse(body.splitlines())
        return True

    async def _sitemap_urls(self) -> list[str]:
        pending = self._robots.site_maps() or [urljoin(self._start, "/sitemap.xml")]
        pages: list[str] = []
        visited: set[str] = set()
        while pending and len(visited) < MAX_SITEMAPS:
            sitemap = pending.pop(0)
            if sitemap in visited:
                continue
            visited.add(sitemap)
            body = await self._fetch_bytes(sitemap)
            if body is None:
                continue
            nested, found = _parse_sitemap(body)
            pending.extend(urljoin(sitemap, url) for url in nested)
            pages.extend(urljoin(sitemap, url) for url in found)
        return pages

    async def _fetch_bytes(self, url: str) -> bytes | None:
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    return None
                return await response.content.read(MAX_BYTES)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.info("crawl.sitemap_failed", url=url, error=str(error))
            return None

    def _enqueue(self, url: str) -> None:
        url = _normalise(url)
        if url in self._seen or not self._in_scope(url):
            return
        self._seen.add(url)
        if _suffix(url) in _NOT_PAGES or not self._robots.can_fetch(self._config.user_agent, url):
            return
        self._queue.put_nowait(url)

    def _in_scope(self, url: str) -> bool:
        return url.startswith(self._result.root)

    async def _work(self) -> None:
        while True:
            url = await self._queue.get()
            try:
                if self._fetched >= self._config.max_pages:
                    self._result.complete = False
                    continue
                self._fetched += 1
                await asyncio.sleep(self._delay)
                await self._visit(url)
                if self._on_page is not None:
                    self._on_page(url, self._fetched, len(self._seen))
            except Exception:  # one bad page must not end the crawl
                log.exception("crawl.page_error", url=url)
                self._result.failed.add(url)
            finally:
                self._queue.task_done()

    async def _visit(self, url: str) -> None:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(ATTEMPTS),
                wait=_retry_after,
                retry=retry_if_exception_type(_RetryLater),
                reraise=True,
            ):
                with attempt:
                    status, final, html = await self._get(url)
        except (aiohttp.ClientError, TimeoutError, _RetryLater) as error:
            log.info("crawl.page_failed", url=url, error=str(error) or type(error).__name__)
            self._result.failed.add(url)
            return
        if status in GONE:
            self._result.gone.add(url)
            return
        if status in REDIRECTS:  # not followed: out of the scope, or too many hops
            return
        if status != 200:
            log.info("crawl.page_failed", url=url, status=status)
            self._result.failed.add(url)
            return
        if html is None:  # not HTML
            return
        if final != url:  # a redirect inside the scope: the page lives at its final address
            if final in self._seen or not self._robots.can_fetch(self._config.user_agent, final):
                return
            self._seen.add(final)
        for link in _links(html, final):
            self._enqueue(link)
        page = await asyncio.to_thread(_extract, html, final)
        if page is not None:
            self._result.pages.append(page)

    async def _get(self, url: str) -> tuple[int, str, str | None]:
        """(status, final URL, the page's HTML or None). Redirects are followed here, each
        only once its target is known to be in the scope and allowed by robots.txt, so no
        request ever leaves the scope; one that would ends with the redirect's status."""
        for _hop in range(MAX_REDIRECTS + 1):
            async with self._session.get(url, allow_redirects=False) as response:
                status = response.status
                if status in RETRIED:
                    raise _RetryLater(status, _seconds(response.headers.get("Retry-After")))
                location = response.headers.get("Location")
                if status not in REDIRECTS or not location:
                    html = None
                    if status == 200 and response.content_type in HTML_TYPES:
                        raw = await response.content.read(MAX_BYTES)
                        html = raw.decode(response.get_encoding(), errors="replace")
                    return status, url, html
            target = _normalise(urljoin(url, location))
            if not self._in_scope(target) or not self._robots.can_fetch(
                self._config.user_agent, target
            ):
                log.info("crawl.redirect_not_followed", url=url, to=target)
                return status, url, None
            url = target
        log.info("crawl.too_many_redirects", url=url)
        return status, url, None


def _retry_after(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome is not None else None
    return error.seconds if isinstance(error, _RetryLater) else 1.0


def _seconds(retry_after: str | None) -> float:
    """Retry-After in seconds, either form: https://www.rfc-editor.org/rfc/rfc9110#name-retry-after"""
    if not retry_after:
        return 1.0
    try:
        seconds = float(retry_after)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(retry_after).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _links(html: str, base: str) -> list[str]:
    tree = LexborHTMLParser(html)
    base_tag = tree.css_first("base[href]")
    if base_tag is not None:
        base = urljoin(base, base_tag.attributes.get("href") or "")
    links = []
    for anchor in tree.css("a[href]"):
        href = (anchor.attributes.get("href") or "").strip()
        rel = (anchor.attributes.get("rel") or "").split()
        if href and "nofollow" not in rel and not href.startswith(_NOT_LINKS):
            links.append(urljoin(base, href))
    return links


def _extract(html: str, url: str) -> Page | None:
    """The page's main text as Markdown (headings kept) under its title; None when it has none.

    trafilatura's own front matter carries a date and a fingerprint; only the title is kept so
    the content hash changes when the text does and not otherwise.
    """
    text = trafilatura.extract(
        html,
        url=url,
        output_format="markdown",
        include_comments=False,
        include_tables=True,
        include_links=False,
    )
    if not text or not text.strip():
        return None
    metadata = trafilatura.extract_metadata(html, default_url=url, extensive=False)
    title = (metadata.title if metadata is not None else None) or ""
    front = yaml.safe_dump({"title": title}, allow_unicode=True, width=1000) if title else ""
    return Page(url, title, f"---\n{front}---\n\n{text.strip()}\n" if front else text)


def _parse_sitemap(body: bytes) -> tuple[list[str], list[str]]:
    """(nested sitemaps, page URLs) of a sitemap or sitemap index; gzip is unpacked."""
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return [], []
    try:
        root = etree.fromstring(body, parser=_XML_PARSER)
    except etree.XMLSyntaxError:
        return [], []
    locations = [(loc.text or "").strip() for loc in root.iter(f"{_SITEMAP_NS}loc")]
    locations = [location for location in locations if location]
    if root.tag == f"{_SITEMAP_NS}sitemapindex":
        return locations, []
    return [], locations


def _normalise(url: str) -> str:
    """Without its fragment, with a lower-case scheme and host."""
    url, _ = urldefrag(url)
    parts = urlsplit(url)
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}{query}"


def _suffix(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name[name.rfind(".") :].lower() if "." in name else ""
