"""Cut a long reply into messages that fit a channel's limit, where a reader would cut it.

Preference: between paragraphs, then between sentences, then between words, and only as a last
resort inside a word. A fenced code block is never cut in the middle; one that alone exceeds
the limit is split between lines and each part re-fenced, so every message renders.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?…。])\s+")


def split_text(text: str, limit: int | None) -> list[str]:
    text = text.strip()
    if not text:
        return []
    if limit is None or len(text) <= limit:
        return [text]
    if limit < 20:
        raise ValueError(f"limit {limit} is too small to split text sensibly")
    parts: list[str] = []
    for block in _blocks(text):
        if _FENCE.fullmatch(block) and len(block) > limit:
            parts.extend(_split_fence(block, limit))
        else:
            parts.extend(_split_prose(block, limit))
    return _pack(parts, limit, "\n\n")


def _blocks(text: str) -> list[str]:
    """Paragraphs, with each fenced code block kept whole as one block."""
    blocks: list[str] = []
    position = 0
    for fence in _FENCE.finditer(text):
        blocks.extend(_paragraphs(text[position : fence.start()]))
        blocks.append(fence.group(0))
        position = fence.end()
    blocks.extend(_paragraphs(text[position:]))
    return blocks


def _paragraphs(text: str) -> list[str]:
    return [paragraph.strip() for paragraph in re.split(r"\n\s*\n", text) if paragraph.strip()]


def _split_prose(block: str, limit: int) -> list[str]:
    if len(block) <= limit:
        return [block]
    sentences = _SENTENCE_END.split(block)
    pieces: list[str] = []
    for sentence in sentences:
        if len(sentence) <= limit:
            pieces.append(sentence)
        else:
            pieces.extend(_pack(_split_words(sentence, limit), limit, " "))
    return _pack(pieces, limit, " ")


def _split_words(sentence: str, limit: int) -> list[str]:
    words: list[str] = []
    for word in sentence.split():
        words.extend(word[i : i + limit] for i in range(0, len(word), limit))
    return words


def _split_fence(block: str, limit: int) -> list[str]:
    lines = block.split("\n")
    opener, closer, body = lines[0], lines[-1], lines[1:-1]
    room = limit - len(opener) - len(closer) - 2
    if room < 10:
        raise ValueError(f"limit {limit} is too small to re-fence a code block")
    chunks = _pack([piece for line in body for piece in _cut(line, room)], room, "\n")
    return [f"{opener}\n{chunk}\n{closer}" for chunk in chunks]


def _cut(line: str, width: int) -> list[str]:
    return [line[i : i + width] for i in range(0, len(line), width)] or [""]


def _pack(pieces: list[str], limit: int, joiner: str) -> list[str]:
    """Greedily join pieces (each within `limit`) into as few messages as fit."""
    messages: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}{joiner}{piece}" if current else piece
        if len(candidate) <= limit:
            current = candidate
        else:
            messages.append(current)
            current = piece
    if current:
        messages.append(current)
    return messages
