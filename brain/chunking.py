"""Turn Markdown, MDX, plain text and HTML documents into heading-scoped chunks.

A document becomes sections (a heading path and its text blocks); sections become chunks of at
most ``max_chars``: a long section is split between blocks (paragraphs, lists, tables, code),
and a tiny one is merged into the next.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from selectolax.lexbor import LexborHTMLParser, LexborNode

MARKDOWN_SUFFIXES = frozenset({".md", ".mdx", ".markdown"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
SUFFIXES = MARKDOWN_SUFFIXES | HTML_SUFFIXES | {".txt"}

# all-MiniLM-L6-v2 reads 256 word pieces: about 1,000 characters of prose plus the label.
MAX_CHARS = 1000
MIN_CHARS = 250
SEPARATOR = " \N{SINGLE RIGHT-POINTING ANGLE QUOTATION MARK} "

_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
# MDX ESM: a paragraph that starts with an import or export (https://mdxjs.com/docs/what-is-mdx/).
_ESM = re.compile(
    r"\A(?:import\s+(?:[\w*{].*\sfrom\s|['\"])"
    r"|export\s+(?:default|const|let|var|function|class|\{|\*))"
)
# Docusaurus admonitions: ":::tip Title" or ":::tip[Title]" opens, ":::" closes.
_ADMONITION = re.compile(r":::\s*[\w-]*\s*(?:\[(?P<bracket>[^\]]*)\])?\s*(?P<title>.*?)\s*")
# JSX with {expression} attributes is not HTML to CommonMark, so it arrives as plain text.
_JSX_TAG = re.compile(r"</?[A-Za-z][\w.:-]*(?:\s[^<>]*)?/?>")
_HTML_DROP = ["script", "style", "nav", "footer", "noscript", "template", "svg", "head"]
_HTML_BLOCKS = frozenset(
    "address article aside blockquote body dd details dialog div dl dt fieldset figcaption "
    "figure form header hr main ol p section summary table tbody thead tfoot tr td th ul br".split()
)
_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}


@dataclass(frozen=True, slots=True)
class Chunk:
    title: str
    heading: str
    text: str

    @property
    def label(self) -> str:
        """The page title and heading path: what the text is about."""
        return SEPARATOR.join(part for part in (self.title, self.heading) if part)

    @property
    def embedding_text(self) -> str:
        """What gets embedded: the page title and heading path give the text its context."""
        return f"{self.label}\n\n{self.text}" if self.label else self.text


def chunk_file(path: Path, *, max_chars: int = MAX_CHARS) -> list[Chunk]:
    return chunk_text(path.read_text(encoding="utf-8", errors="replace"), path, max_chars=max_chars)


def chunk_text(text: str, path: Path, *, max_chars: int = MAX_CHARS) -> list[Chunk]:
    """Chunk ``text`` as the kind of document that ``path``'s suffix names."""
    suffix = path.suffix.lower()
    if suffix in HTML_SUFFIXES:
        builder = parse_html(text)
    elif suffix in MARKDOWN_SUFFIXES:
        builder = parse_markdown(text)
    else:
        builder = _SectionBuilder("")
        for paragraph in re.split(r"\n\s*\n", text):
            builder.block(paragraph.strip())
    title = builder.title or prettify_stem(path.stem)
    chunks = list(_chunks(title, builder.sections, max_chars))
    # A page with a title and no body text is still findable by its title.
    return chunks or ([Chunk(title, "", title)] if text.strip() else [])


def prettify_stem(stem: str) -> str:
    words = re.sub(r"[-_.\s]+", " ", stem).strip()
    return words[:1].upper() + words[1:]


@dataclass(slots=True)
class _Section:
    headings: tuple[str, ...]
    blocks: list[str] = field(default_factory=list)


class _SectionBuilder:
    """Collects text blocks under the current heading path.

    The H1 that repeats the page title is the title, not a heading of the path.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[_Section] = [_Section(())]
        self._path: list[tuple[int, str]] = []
        self._words: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.end_text()
        if not self.title and level == 1:
            self.title = text
        if level == 1 and text == self.title and not self._path:
            return
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        if text:
            self._path.append((level, text))
        self.sections.append(_Section(tuple(text for _, text in self._path)))

    def block(self, text: str) -> None:
        self.end_text()
        if text.strip():
            self.sections[-1].blocks.append(text)

    def text(self, text: str) -> None:
        """Running text (HTML), collected until the next block boundary."""
        self._words.append(text)

    def end_text(self) -> None:
        if self._words:
            text, self._words = " ".join("".join(self._words).split()), []
            self.block(text)


# Markdown and MDX

_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def parse_markdown(text: str) -> _SectionBuilder:
    title, body = _split_frontmatter(text)
    builder = _SectionBuilder(title)
    _MarkdownReader(builder).read(_MARKDOWN.parse(body))
    return builder


def _split_frontmatter(text: str) -> tuple[str, str]:
    match = _FRONTMATTER.match(text)
    if not match:
        return "", text
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        meta = None
    title = meta.get("title") if isinstance(meta, dict) else None
    return (str(title).strip() if title else ""), text[match.end() :]


class _MarkdownReader:
    """Walks markdown-it's flat token stream into sections.

    A list or a table becomes one block with a line per item or row, so that a long one is
    split between items, never inside one.
    """

    def __init__(self, builder: _SectionBuilder) -> None:
        self._builder = builder
        self._opener: Token | None = None  # the token that opened the current inline content
        self._lists: list[list[int]] = []  # per open list: [next number], or [] for bullets
        self._lines: list[str] = []  # lines of the outermost open list or table
        self._marker = ""
        self._row: list[str] = []

    def read(self, tokens: list[Token]) -> None:
        handlers: dict[str, Callable[[Token], None]] = {
            "heading_open": self._open,
            "paragraph_open": self._open,
            "th_open": self._open,
            "td_open": self._open,
            "inline": self._inline,
            "bullet_list_open": self._list_open,
            "ordered_list_open": self._list_open,
            "bullet_list_close": self._list_close,
            "ordered_list_close": self._list_close,
            "list_item_open": self._item_open,
            "tr_close": self._row_close,
            "table_close": lambda _: self._flush_lines(),
            "fence": lambda token: self._block(token.content.rstrip()),
            "code_block": lambda token: self._block(token.content.rstrip()),
            "html_block": lambda token: self._block(html_fragment_text(token.content)),
        }
        for token in tokens:
            handler = handlers.get(token.type)
            if handler is not None:
                handler(token)

    def _open(self, token: Token) -> None:
        self._opener = token

    def _inline(self, token: Token) -> None:
        opener = self._opener
        text = _inline_text(token)
        if opener is not None and opener.type == "heading_open" and not self._lists:
            self._builder.heading(int(opener.tag[1]), " ".join(text.split()))
        elif opener is not None and opener.type in ("th_open", "td_open"):
            self._row.append(" ".join(text.split()))
        elif text := _clean_paragraph(text):
            self._block(text)

    def _block(self, text: str) -> None:
        if not text:
            return
        if not self._lists:
            self._builder.block(text)
            return
        indent = "  " * len(self._lists)
        marker, self._marker = self._marker or "  ", ""
        self._lines.append(indent[2:] + marker + text.replace("\n", "\n" + indent))

    def _list_open(self, token: Token) -> None:
        ordered = token.type == "ordered_list_open"
        self._lists.append([int(token.attrGet("start") or 1)] if ordered else [])

    def _list_close(self, _: Token) -> None:
        self._lists.pop()
        if not self._lists:
            self._flush_lines()

    def _item_open(self, _: Token) -> None:
        numbers = self._lists[-1]
        self._marker = f"{numbers[0]}. " if numbers else "- "
        if numbers:
            numbers[0] += 1

    def _row_close(self, _: Token) -> None:
        self._lines.append(" | ".join(self._row))
        self._row = []

    def _flush_lines(self) -> None:
        self._builder.block("\n".join(line for line in self._lines if line.strip()))
        self._lines = []


def _inline_text(token: Token) -> str:
    """Plain text of inline Markdown; absolute link targets are kept after the link text."""
    parts: list[str] = []
    link_start, href = 0, ""
    for child in token.children or []:
        if child.type == "text":
            parts.append(_JSX_TAG.sub("", child.content))
        elif child.type == "code_inline":
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "link_open":
            link_start, href = len(parts), str(child.attrGet("href") or "")
        elif child.type == "link_close" and _shows_url(href, "".join(parts[link_start:])):
            parts.append(f" ({href})")
    return "".join(parts)


def _shows_url(href: str, label: str) -> bool:
    return href.startswith(("http://", "https://")) and href != label.strip()


def _clean_paragraph(text: str) -> str:
    """Drop MDX import/export paragraphs and admonition fences, keeping admonition titles."""
    if _ESM.match(text):
        return ""
    lines: list[str] = []
    for line in text.split("\n"):
        match = _ADMONITION.fullmatch(line) if line.startswith(":::") else None
        if match is None:
            lines.append(line)
        elif title := match.group("bracket") or match.group("title"):
            lines.append(title)
    return "\n".join(lines).strip()


# HTML


def parse_html(text: str) -> _SectionBuilder:
    tree = LexborHTMLParser(text)
    title_node = tree.css_first("title") or tree.css_first("h1")
    builder = _SectionBuilder(" ".join(title_node.text().split()) if title_node else "")
    tree.strip_tags(_HTML_DROP)
    if tree.body is not None:
        _walk_html(tree.body, builder)
    builder.end_text()
    return builder


def html_fragment_text(html: str) -> str:
    """Visible text of an HTML (or MDX JSX) fragment, without scripts and styles."""
    tree = LexborHTMLParser(html)
    tree.strip_tags(["script", "style", "head"])
    return " ".join(tree.body.text(separator=" ").split()) if tree.body else ""


def _walk_html(node: LexborNode, builder: _SectionBuilder) -> None:
    for child in node.iter(include_text=True):
        tag = child.tag
        if tag == "-text":
            builder.text(child.text_content or "")
        elif tag in _HTML_HEADINGS:
            builder.heading(_HTML_HEADINGS[tag], " ".join(child.text(separator=" ").split()))
        elif tag == "pre":
            builder.block(child.text().strip("\n"))
        elif tag == "li":
            builder.end_text()
            builder.text("- ")
            _walk_html(child, builder)
            builder.end_text()
        elif tag in _HTML_BLOCKS:
            builder.end_text()
            _walk_html(child, builder)
            builder.end_text()
        else:
            _walk_html(child, builder)


# Sections to chunks


def _chunks(title: str, sections: list[_Section], max_chars: int) -> Iterator[Chunk]:
    pieces = [
        Chunk(title, SEPARATOR.join(section.headings), text)
        for section in sections
        for text in _pack(section.blocks, max_chars)
    ]
    pending: Chunk | None = None
    for piece in pieces:
        if pending is None:
            pending = piece
        elif len(pending.text) < MIN_CHARS and len(_merge(pending, piece).text) <= max_chars:
            pending = _merge(pending, piece)
        else:
            yield pending
            pending = piece
    if pending is not None:
        yield pending


def _merge(first: Chunk, second: Chunk) -> Chunk:
    """Keep the first chunk's heading; the second's own heading becomes a line of the text."""
    if second.heading == first.heading:
        return Chunk(first.title, first.heading, f"{first.text}\n\n{second.text}")
    label = second.heading.rsplit(SEPARATOR, 1)[-1]
    return Chunk(first.title, first.heading, f"{first.text}\n\n{label}\n\n{second.text}")


def _pack(blocks: list[str], max_chars: int) -> Iterator[str]:
    """Join blocks greedily up to max_chars; a longer block is split between lines."""
    parts = (
        part
        for block in blocks
        for part in _greedy_join(_wrap(block.split("\n"), max_chars), max_chars, "\n")
    )
    return _greedy_join(parts, max_chars, "\n\n")


def _greedy_join(pieces: Iterable[str], max_chars: int, joiner: str) -> Iterator[str]:
    current = ""
    for piece in pieces:
        if current and len(current) + len(joiner) + len(piece) > max_chars:
            yield current
            current = piece
        else:
            current = f"{current}{joiner}{piece}" if current else piece
    if current:
        yield current


def _wrap(lines: list[str], max_chars: int) -> Iterator[str]:
    """Cut lines longer than max_chars at a space (or hard, when there is none)."""
    for line in lines:
        while len(line) > max_chars:
            cut = line.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            yield line[:cut]
            line = line[cut:].lstrip()
        yield line
