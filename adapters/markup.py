"""Markdown replies rendered for channels that show only plain text (SMS, WhatsApp).

The brain writes Markdown. A phone shows `**bold**` and `[label](url)` literally, so emphasis is
dropped, links become `label (url)`, list markers and table rows are kept as text.
Telegram takes a small HTML subset instead: `to_telegram_html`.
"""

from __future__ import annotations

import re
from html import escape

from markdown_it import MarkdownIt
from markdown_it.token import Token

_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])
_BLANK_RUNS = re.compile(r"\n{3,}")


def to_plain(text: str) -> str:
    """Markdown as plain text: emphasis dropped, links as `label (url)`, lists and tables kept."""
    lines: list[str] = []
    lists = _Lists()
    marker = ""  # the list marker the next block inside a list item starts with
    cells: list[str] | None = None  # the table row being read
    for token in _MARKDOWN.parse(text):
        match token.type:
            case "bullet_list_open" | "ordered_list_open":
                lists.open(token)
            case "bullet_list_close" | "ordered_list_close":
                if lists.close():
                    lines.append("")
            case "list_item_open":
                marker = lists.marker("-") + " "
            case "tr_open":
                cells = []
            case "tr_close":
                lines.append(" | ".join(cells or ()))
                cells = None
            case "inline" if cells is not None:
                cells.append(_inline(token))
            case "inline":
                indent = "  " * max(len(lists) - 1, 0)
                lines.append(f"{indent}{marker}{_inline(token)}")
                marker = ""
            case "fence" | "code_block":
                lines.append(token.content.rstrip("\n"))
            case "paragraph_close" | "heading_close" | "table_close" if not lists:
                lines.append("")
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


class _Lists:
    """The lists open at a point of the token stream, innermost last."""

    def __init__(self) -> None:
        self._next: list[int | None] = []  # per list: the next item's number; None for bullets

    def __len__(self) -> int:
        return len(self._next)

    def open(self, token: Token) -> None:
        ordered = token.type == "ordered_list_open"
        self._next.append(int(token.attrGet("start") or 1) if ordered else None)

    def close(self) -> bool:
        """Close the innermost list; True when it was the outermost."""
        self._next.pop()
        return not self._next

    def marker(self, bullet: str) -> str:
        """The next item's marker: `bullet`, or its number in an ordered list."""
        number = self._next[-1]
        if number is None:
            return bullet
        self._next[-1] = number + 1
        return f"{number}."


def _inline(token: Token) -> str:
    parts: list[str] = []
    href = ""
    label_start = 0
    for child in token.children or ():
        match child.type:
            case "text" | "code_inline" | "html_inline":
                parts.append(child.content)
            case "softbreak" | "hardbreak":
                parts.append("\n")
            case "link_open":
                href = str(child.attrGet("href") or "")
                label_start = len(parts)
            case "link_close":
                label = "".join(parts[label_start:])
                # An autolink (<https://…>) already shows its address; don't print it twice.
                if href and label not in (href, href.removeprefix("mailto:")):
                    parts.append(f" ({href})")
            case "image":
                parts.append(f"{child.content} ({child.attrGet('src')})".strip())
    return "".join(parts)


# Telegram's HTML parse mode knows only inline tags (b, i, s, code, pre, a, blockquote), so
# headings become bold lines, list items get a bullet or their number, table rows are joined with
# " | ", and everything else is escaped text. The rendering never adds visible characters beyond
# the source's (markers and link targets disappear, `&lt;` counts as one character once parsed),
# so a reply split to the 4096 limit still fits: https://core.telegram.org/bots/api#html-style
_HTML_TAGS = {
    "strong_open": "<b>",
    "strong_close": "</b>",
    "em_open": "<i>",
    "em_close": "</i>",
    "s_open": "<s>",
    "s_close": "</s>",
    "link_close": "</a>",
}


def to_telegram_html(text: str) -> str:
    """Markdown as Telegram HTML (parse_mode=HTML), every text run escaped."""
    out: list[str] = []
    lists = _Lists()
    cells: list[str] | None = None  # the table row being read
    for token in _MARKDOWN.parse(text):
        match token.type:
            case "tr_open":
                cells = []
            case "tr_close":
                out.append(" | ".join(cells or ()) + "\n")
                cells = None
            case "inline" if cells is not None:
                cells.append(_html_inline(token))
            case "inline":
                out.append(_html_inline(token))
            case "heading_open":
                out.append("<b>")
            case "heading_close":
                out.append("</b>\n\n")
            case "paragraph_close":
                # Paragraphs of a tight list are hidden: one line per item, not a blank line.
                out.append("\n" if token.hidden else "\n\n")
            case "table_close":
                out.append("\n")
            case "bullet_list_open" | "ordered_list_open":
                lists.open(token)
            case "bullet_list_close" | "ordered_list_close":
                if lists.close():
                    out.append("\n")
            case "list_item_open":
                out.append("  " * (len(lists) - 1) + lists.marker("•") + " ")
            case "blockquote_open":
                out.append("<blockquote>")
            case "blockquote_close":
                _trim_newlines(out)
                out.append("</blockquote>\n\n")
            case "fence" | "code_block":
                language = token.info.strip().split(" ")[0] if token.info else ""
                attribute = f' class="language-{escape(language)}"' if language else ""
                body = escape(token.content.rstrip("\n"), quote=False)
                out.append(f"<pre><code{attribute}>{body}</code></pre>\n\n")
            case "hr":
                out.append("———\n\n")
    return _BLANK_RUNS.sub("\n\n", "".join(out)).strip()


def _html_inline(token: Token) -> str:
    parts: list[str] = []
    for child in token.children or ():
        match child.type:
            case "text" | "html_inline":
                parts.append(escape(child.content, quote=False))
            case "softbreak" | "hardbreak":
                parts.append("\n")
            case "code_inline":
                parts.append(f"<code>{escape(child.content, quote=False)}</code>")
            case "link_open":
                parts.append(f'<a href="{escape(str(child.attrGet("href") or ""))}">')
            case "image":
                source = escape(str(child.attrGet("src") or ""))
                parts.append(f'<a href="{source}">{escape(child.content, quote=False)}</a>')
            case _:
                parts.append(_HTML_TAGS.get(child.type, ""))
    return "".join(parts)


def _trim_newlines(out: list[str]) -> None:
    """Drop the blank line a quote's last paragraph left, so the tag closes on its text."""
    while out and out[-1].endswith("\n"):
        out[-1] = out[-1].rstrip("\n")
        if out[-1]:
            return
        out.pop()
