"""The shared splitter: fits the limit, cuts where a reader would, never inside a code fence."""

from __future__ import annotations

import pytest

from gateway.split import split_text

PARAGRAPHS = "\n\n".join(
    f"Paragraph {n} talks about shipping. It has a second sentence. And a third one here."
    for n in range(10)
)


def words(text: str) -> list[str]:
    return [word for word in text.split() if not word.startswith("```")]


def test_short_text_is_one_message() -> None:
    assert split_text("  Hello there.  ", 100) == ["Hello there."]


def test_no_limit_never_splits() -> None:
    assert split_text(PARAGRAPHS, None) == [PARAGRAPHS]


def test_empty_text_gives_no_messages() -> None:
    assert split_text(" \n ", 100) == []


@pytest.mark.parametrize("limit", [60, 100, 200, 4096])
def test_every_part_fits_and_nothing_is_lost(limit: int) -> None:
    parts = split_text(PARAGRAPHS, limit)
    assert all(len(part) <= limit for part in parts)
    assert words(" ".join(parts)) == words(PARAGRAPHS)


def test_cuts_between_paragraphs_first() -> None:
    parts = split_text(PARAGRAPHS, 200)
    assert all(part.startswith("Paragraph") and part.endswith(".") for part in parts)


def test_a_long_paragraph_is_cut_between_sentences() -> None:
    paragraph = " ".join(f"Sentence number {n} ends here." for n in range(20))
    parts = split_text(paragraph, 90)
    assert all(part.endswith("here.") for part in parts)


def test_a_word_longer_than_the_limit_is_cut_as_a_last_resort() -> None:
    parts = split_text("x" * 250, 100)
    assert [len(part) for part in parts] == [100, 100, 50]


def test_a_code_fence_that_fits_is_never_cut() -> None:
    code = "```python\n" + "\n".join(f"value_{n} = {n}" for n in range(8)) + "\n```"
    text = f"Intro sentence.\n\n{code}\n\nOutro sentence."
    parts = split_text(text, len(code) + 5)
    assert code in parts


def test_an_oversized_code_fence_is_split_between_lines_and_refenced() -> None:
    code = "```python\n" + "\n".join(f"value_{n} = {n}" for n in range(40)) + "\n```"
    parts = split_text(code, 120)
    assert len(parts) > 1
    for part in parts:
        assert len(part) <= 120
        assert part.startswith("```python\n") and part.endswith("\n```")
    body = [line for part in parts for line in part.split("\n")[1:-1]]
    assert body == [f"value_{n} = {n}" for n in range(40)]


def test_the_4096_limit_of_telegram_splits_5000_characters_in_two() -> None:
    text = " ".join(["word"] * 1000)  # 4,999 characters
    parts = split_text(text, 4096)
    assert len(parts) == 2 and all(len(part) <= 4096 for part in parts)
