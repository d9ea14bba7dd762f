"""Hybrid retrieval on real Chroma and the real multilingual embedder: what BM25 adds, what the
dense side keeps, one page per slot, and the lexical index following ingests in any process."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brain import knowledge, lexical
from brain.config import BrainConfig
from brain.embedder import Embedder
from brain.knowledge import KnowledgeBase, Retriever
from brain.offline import OfflineAnswerer
from brain.query import search_text
from gateway.message import Inbound, Role, TranscriptEntry, new_id

FIXTURES = Path(__file__).parent / "fixtures" / "hybrid"
# A remittance reference that only billing.md carries: a rare exact term.
REFERENCE = "QX-FERNWOOD-88"

Opener = Callable[..., KnowledgeBase]  # retrievers (default: both) -> a knowledge base


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A copy of the fixture pages, free to edit."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "docs"))


@pytest.fixture
def open_kb(tmp_path: Path, embedder: Embedder) -> Iterator[Opener]:
    """Opens knowledge bases on one embedded Chroma folder; closes them all at the end."""
    opened: list[KnowledgeBase] = []

    def opener(*retrievers: Retriever) -> KnowledgeBase:
        base = KnowledgeBase(
            tmp_path / "data", embedder=embedder, retrievers=retrievers or ("dense", "bm25")
        )
        opened.append(base)
        return base

    yield opener
    for base in opened:
        base.close()


async def sources(kb: KnowledgeBase, query: str, k: int = 5) -> list[str]:
    return [passage.source for passage in await kb.search(query, k=k)]


async def test_a_rare_exact_term_is_found_by_bm25(open_kb: Opener, docs: Path) -> None:
    hybrid = open_kb()
    hybrid.ingest([docs])
    question = f"what is {REFERENCE}"

    best = (await hybrid.search(question))[0]
    assert best.source == "billing.md"
    assert "bm25" in best.found_by
    assert REFERENCE in best.text
    # The embedding alone blurs the code away: another page comes first.
    assert (await sources(open_kb("dense"), question))[0] != "billing.md"


async def test_a_question_in_another_language_is_found_by_the_dense_side(
    open_kb: Opener, docs: Path
) -> None:
    hybrid = open_kb()
    hybrid.ingest([docs])
    best = (await hybrid.search("Wie kann ich mein Passwort zurücksetzen?"))[0]
    assert best.source == "reset-password.md"
    assert best.found_by == ("dense",)  # no German word is in the English index
    assert best.score > 0.4  # the confidence stays the cosine similarity
    spanish = await sources(hybrid, "¿Cómo protejo el enlace compartido con una contraseña?")
    assert spanish[0] == "shared-links.md"


async def test_top_k_holds_distinct_pages_unless_asked(open_kb: Opener, docs: Path) -> None:
    hybrid = open_kb()
    hybrid.ingest([docs])
    question = "where do I see outbound link clicks"
    pages = await sources(hybrid, question)
    assert pages[0] == "outbound-links.md"
    assert len(pages) == len(set(pages)) == 5

    passages = await hybrid.search(question, k=5, per_page=None)
    outbound = [p for p in passages if p.source == "outbound-links.md"]
    assert len(outbound) >= 3  # the page's sections, together at the top
    assert [p.source for p in passages[: len(outbound)]] == ["outbound-links.md"] * len(outbound)
    two = [p.source for p in await hybrid.search(question, k=4, per_page=2)]
    assert two[:2] == ["outbound-links.md"] * 2 and len(set(two)) == 3


async def test_the_lexical_index_follows_an_incremental_ingest(open_kb: Opener, docs: Path) -> None:
    hybrid = open_kb()
    hybrid.ingest([docs])
    assert "billing.md" in await sources(hybrid, REFERENCE)

    # Changed: the reference is replaced.
    billing = docs / "billing.md"
    billing.write_text(billing.read_text().replace(REFERENCE, "ZK-BIRCHWOOD-12"))
    assert hybrid.ingest([docs]).updated == 1
    passages = await hybrid.search("ZK-BIRCHWOOD-12")
    assert passages[0].source == "billing.md" and "bm25" in passages[0].found_by
    assert not any("bm25" in p.found_by for p in await hybrid.search(REFERENCE))

    # Added: a page with a term no other page has.
    (docs / "webhooks.md").write_text(
        "# Webhooks\n\nSign each delivery with the header X-Plinth-Signature and check it.\n"
    )
    assert hybrid.ingest([docs]).added == 1
    best = (await hybrid.search("X-Plinth-Signature"))[0]
    assert best.source == "webhooks.md" and "bm25" in best.found_by

    # Removed: gone from both rankings.
    (docs / "webhooks.md").unlink()
    assert hybrid.ingest([docs]).removed == 1
    assert "webhooks.md" not in await sources(hybrid, "X-Plinth-Signature", k=10)


@pytest.fixture
async def writer_and_reader(
    open_kb: Opener, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[KnowledgeBase, KnowledgeBase]:
    """Two instances on one Chroma: one ingests, the other has built its lexical index and
    keeps it (RECHECK_SECONDS made long)."""
    writer, reader = open_kb(), open_kb()
    writer.ingest([docs])
    monkeypatch.setattr(lexical, "RECHECK_SECONDS", 3600.0)
    assert (await reader.search(REFERENCE))[0].source == "billing.md"  # builds its index
    return writer, reader


async def test_another_instance_sees_an_ingest_made_elsewhere(
    writer_and_reader: tuple[KnowledgeBase, KnowledgeBase],
    docs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, reader = writer_and_reader

    billing = docs / "billing.md"
    billing.write_text(billing.read_text().replace(REFERENCE, "ZK-BIRCHWOOD-12"))
    writer.ingest([docs])
    # Within RECHECK_SECONDS the reader keeps its index; then it reads the new stamp.
    assert "bm25" in (await reader.search(REFERENCE))[0].found_by
    monkeypatch.setattr(lexical, "RECHECK_SECONDS", 0.0)
    best = (await reader.search("ZK-BIRCHWOOD-12"))[0]
    assert best.source == "billing.md" and "bm25" in best.found_by
    assert not any("bm25" in p.found_by for p in await reader.search(REFERENCE))


async def test_a_page_added_elsewhere_is_found_by_the_dense_side_before_the_index_follows(
    writer_and_reader: tuple[KnowledgeBase, KnowledgeBase], docs: Path
) -> None:
    # The dense side reads texts from the lexical index; a chunk the index does not hold yet
    # is read from Chroma by id, so a fresh page is quoted as it is stored.
    writer, reader = writer_and_reader
    (docs / "gift-cards.md").write_text(
        "# Gift cards\n\nGift cards never expire and can be spent on any plan or add-on.\n"
    )
    writer.ingest([docs])
    best = (await reader.search("do gift cards expire?", k=1))[0]
    assert best.source == "gift-cards.md" and best.found_by == ("dense",)
    assert "never expire" in best.text and best.title == "Gift cards"


async def test_a_page_removed_elsewhere_is_not_quoted_before_the_index_follows(
    writer_and_reader: tuple[KnowledgeBase, KnowledgeBase], docs: Path
) -> None:
    # The reader's index (and the vectors it holds) still has billing.md: the collection's
    # count tells it that it is behind, so neither side quotes the page from it.
    writer, reader = writer_and_reader
    (docs / "billing.md").unlink()
    assert writer.ingest([docs]).removed == 1
    assert "billing.md" not in await sources(reader, f"what is {REFERENCE}", k=10)


QUESTIONS = [
    f"what is {REFERENCE}",
    "do you take paypal?",
    "wie kann ich mein Konto löschen?",
    "how are outbound links counted",
]


async def test_the_exact_search_in_memory_ranks_as_chromas_index_does(
    open_kb: Opener, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, indexed = open_kb(), open_kb()
    held.ingest([docs])
    in_memory = [await held.search(question) for question in QUESTIONS]
    assert held._lexicon.current().chunks.vectors is not None
    monkeypatch.setattr(knowledge, "IN_MEMORY_CHUNKS", 0)  # Chroma's HNSW for the other
    by_chroma = [await indexed.search(question) for question in QUESTIONS]
    assert indexed._lexicon.current().chunks.vectors is None
    for ours, chromas in zip(in_memory, by_chroma, strict=True):
        assert [(p.source, p.heading, p.found_by) for p in ours] == [
            (p.source, p.heading, p.found_by) for p in chromas
        ]
        assert [p.score for p in ours] == pytest.approx([p.score for p in chromas], abs=1e-5)


async def test_a_follow_up_that_finds_nothing_alone_is_searched_with_the_turn_before(
    open_kb: Opener, docs: Path
) -> None:
    kb = open_kb()
    kb.ingest([docs])
    config = BrainConfig(anthropic_api_key=None)
    answerer = OfflineAnswerer(kb, config)
    first = TranscriptEntry(role=Role.CUSTOMER, text="I want to track clicks on partner links")
    follow_up = Inbound(
        channel="rest",
        conversation="rest:kim",
        sender="kim",
        text="Where do we find the numbers afterwards?",
        provider_message_id=new_id(),
    )
    assert search_text(follow_up.content, [first]) == follow_up.content  # no word leans back
    alone = await answerer.retrieve(follow_up)
    assert alone and alone[0].score < config.min_confidence  # nothing to answer from
    found = await answerer.retrieve(follow_up, [first])
    assert found and found[0].source == "outbound-links.md"
    assert found[0].score >= config.min_confidence
