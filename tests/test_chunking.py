from __future__ import annotations

from pathlib import Path

from brain.chunking import SEPARATOR, Chunk, chunk_file, chunk_text

FIXTURES = Path(__file__).parent / "fixtures" / "kb"


def chunks_of(text: str, name: str, max_chars: int = 1000) -> list[Chunk]:
    return chunk_text(text, Path(name), max_chars=max_chars)


def all_text(chunks: list[Chunk]) -> str:
    return "\n".join(chunk.text for chunk in chunks)


def test_frontmatter_title_wins_over_the_first_h1() -> None:
    text = "---\ntitle: Billing FAQ\nsidebar_position: 2\n---\n\n# Payments\n\nWe bill monthly.\n"
    [chunk] = chunks_of(text, "billing.md")
    assert chunk.title == "Billing FAQ"
    assert chunk.heading == "Payments"
    assert "title:" not in chunk.text


def test_first_h1_is_the_title_and_not_a_heading() -> None:
    [chunk] = chunks_of("# Shipping\n\nWe ship daily.\n", "shipping.md")
    assert (chunk.title, chunk.heading, chunk.text) == ("Shipping", "", "We ship daily.")


def test_without_any_title_the_file_stem_is_prettified() -> None:
    [chunk] = chunks_of("Reset it from the sign-in page.\n", "reset-password.md")
    assert chunk.title == "Reset password"


def test_sections_carry_their_heading_path() -> None:
    text = (
        "# Guide\n\nIntro " + "words " * 60 + "\n\n"
        "## Install\n\n" + "Install " * 60 + "\n\n"
        "### On Linux\n\n" + "Linux " * 60 + "\n\n"
        "## Configure\n\n" + "Configure " * 60 + "\n"
    )
    chunks = chunks_of(text, "guide.md")
    assert [chunk.heading for chunk in chunks] == [
        "",
        "Install",
        f"Install{SEPARATOR}On Linux",
        "Configure",
    ]
    assert chunks[2].embedding_text.startswith(f"Guide{SEPARATOR}Install{SEPARATOR}On Linux\n\n")


def test_mdx_imports_jsx_and_admonition_fences_are_dropped_but_their_text_kept() -> None:
    text = (FIXTURES / "shipping.mdx").read_text()
    body = all_text(chunks_of(text, "shipping.mdx"))
    assert "import Tabs" not in body
    assert "export const" not in body
    assert "PlanFeatureNote" not in body
    assert "CtaBox" not in body
    assert ":::" not in body
    assert "We do not ship to post office boxes." in body


def test_jsx_expressions_and_admonition_titles() -> None:
    text = (FIXTURES / "billing.md").read_text()
    body = all_text(chunks_of(text, "billing.md"))
    assert "useBaseUrl" not in body
    assert "<img" not in body
    assert "<div" not in body
    assert "Adding a VAT number\nBusiness customers in the EU" in body
    assert "our billing desk (https://brewhaus.example/billing)" in body


def test_code_blocks_keep_their_text_even_lines_that_look_like_mdx() -> None:
    text = "# Next.js\n\n```jsx\nimport Plausible from 'next-plausible'\n<Provider />\n```\n"
    [chunk] = chunks_of(text, "nextjs.mdx")
    assert chunk.text == "import Plausible from 'next-plausible'\n<Provider />"


def test_bracketed_admonition_title_is_kept() -> None:
    [chunk] = chunks_of(":::tip[Not what you need?]\nSee the API.\n:::\n", "tip.md")
    assert chunk.text == "Not what you need?\nSee the API."


def test_lists_and_tables_become_lines() -> None:
    text = (
        "Steps:\n\n1. Open settings\n2. Click **Save**\n   - really\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    body = all_text(chunks_of(text, "steps.md"))
    assert "1. Open settings\n2. Click Save\n  - really" in body
    assert "a | b\n1 | 2" in body


def test_html_title_headings_and_dropped_chrome() -> None:
    chunks = chunk_file(FIXTURES / "returns.html", max_chars=300)
    assert {chunk.title for chunk in chunks} == {"Returns policy"}
    assert [chunk.heading for chunk in chunks] == [
        "Returns and refunds",
        f"Returns and refunds{SEPARATOR}Damaged equipment",
        f"Returns and refunds{SEPARATOR}How refunds are paid",
    ]
    body = all_text(chunks)
    assert "- Keep the original box." in body
    for dropped in ("Home", "analytics", "font-family", "Copyright"):
        assert dropped not in body


def test_html_without_title_uses_the_first_h1() -> None:
    [chunk] = chunks_of("<h1>Opening hours</h1><p>Nine to five.</p>", "hours.html")
    assert (chunk.title, chunk.heading, chunk.text) == ("Opening hours", "", "Nine to five.")


def test_plain_text_is_split_into_paragraph_chunks() -> None:
    text = "\n\n".join(f"Paragraph {n} " + "x" * 400 for n in range(5))
    chunks = chunks_of(text, "notes.txt")
    assert {chunk.title for chunk in chunks} == {"Notes"}
    assert all(len(chunk.text) <= 1000 for chunk in chunks)
    assert all_text(chunks).replace("\n", "") == text.replace("\n", "")


def test_long_sections_split_at_paragraphs_under_the_cap() -> None:
    paragraphs = [f"Sentence {n}. " * 20 for n in range(10)]
    chunks = chunks_of("## Long\n\n" + "\n\n".join(paragraphs), "long.md", max_chars=800)
    assert len(chunks) > 1
    assert all(len(chunk.text) <= 800 for chunk in chunks)
    assert all(chunk.heading == "Long" for chunk in chunks)
    for paragraph in paragraphs:
        assert any(paragraph.strip() in chunk.text for chunk in chunks)


def test_a_huge_code_block_is_split_by_lines() -> None:
    code = "\n".join(f"line_{n} = {n}" for n in range(400))
    chunks = chunks_of(f"```python\n{code}\n```\n", "code.md", max_chars=500)
    assert all(len(chunk.text) <= 500 for chunk in chunks)
    assert "\n".join(chunk.text for chunk in chunks) == code


def test_tiny_sections_merge_into_the_next() -> None:
    text = "## A\n\nShort.\n\n## B\n\nAlso short.\n\n## C\n\n" + "Long " * 300
    chunks = chunks_of(text, "faq.md")
    assert chunks[0].heading == "A"
    assert chunks[0].text == "Short.\n\nB\n\nAlso short."
    assert chunks[1].heading == "C"


def test_title_only_page_is_still_one_chunk() -> None:
    assert chunks_of("---\ntitle: Coming soon\n---\n", "soon.md") == [
        Chunk("Coming soon", "", "Coming soon")
    ]
    assert chunks_of("  \n", "empty.md") == []
