from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brain.embedder import DEFAULT_EMBEDDER, Embedder, load_embedder
from brain.exemplars import ExemplarIndex
from brain.knowledge import KnowledgeBase
from tests.counting_embedder import CountingEmbedder

EXEMPLARS = {
    "human": ["I want to talk to a person", "can a real human help me"],
    "refund": ["I want my money back", "please refund my last payment"],
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(DEFAULT_EMBEDDER)


async def test_a_message_matches_the_label_of_its_meaning_in_another_language(
    embedder: Embedder, tmp_path: Path
) -> None:
    kb = KnowledgeBase(tmp_path, embedder=embedder)
    index = await ExemplarIndex.build(EXEMPLARS, kb.embed)
    for message, label in [
        ("Können Sie mich bitte mit einem Mitarbeiter verbinden?", "human"),
        ("Quiero que me devuelvan el dinero del último cobro", "refund"),
    ]:
        matches = index.match((await kb.embed([message]))[0])
        assert [m.label for m in matches] == [label, ({"human", "refund"} - {label}).pop()]
        assert matches[0].score > matches[1].score
    kb.close()


async def test_embed_reuses_the_vector_of_a_text_just_searched(
    embedder: Embedder, tmp_path: Path
) -> None:
    counting = CountingEmbedder(embedder)
    kb = KnowledgeBase(tmp_path, embedder=counting)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "refunds.md").write_text("# Refunds\n\nRefunds take five days.\n")
    kb.ingest([tmp_path / "docs"])
    await kb.search("how long does a refund take")
    counting.embedded.clear()
    vectors = await kb.embed(["how long does a refund take", "something new"])
    assert counting.embedded == ["something new"]
    assert vectors.shape == (2, embedder.dimensions)
    assert np.allclose(vectors[0], embedder.embed(["how long does a refund take"])[0], atol=1e-5)
    kb.close()


def test_an_empty_index_matches_nothing() -> None:
    assert ExemplarIndex([], [], np.empty((0, 0))).match(np.ones(3)) == []
