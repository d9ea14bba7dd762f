"""Questions grouped by meaning: the report's topics, and one knowledge-base draft per gap.

The questions are embedded by the gateway's own embedder (the knowledge base's, offline), so
"where's my parcel" and "my order still hasn't arrived" meet however they are worded, in any
language the embedder reads. They are grouped by agglomerative clustering on cosine distance
with average linkage (scikit-learn), cut where the average similarity between two groups falls
below `similarity`: no number of topics to guess, and a question unlike any other stays alone.

Each group is named by its most distinctive words, c-TF-IDF style (as BERTopic does): a word
weighs by how often the group uses it, against how many groups use it at all, so the words
every question shares ("order", "please") sink and the ones that set a topic apart rise.

scikit-learn (and SciPy under it) loads with the first call, not with the web process that
serves the report page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from typing import cast

import numpy as np

# The embedder: texts to one row each (KnowledgeBase.embed, without keeping the vectors).
Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]

EMBED_BATCH = 64  # texts per call: a live process's searches get the embedder between batches
TERMS = 3
# Words of a chat, not of a topic.
_CHAT_WORDS = frozenset(
    {"hi", "hello", "hey", "thanks", "thank", "pls", "plz", "please", "ok", "okay", "just", "im"}
)


@cache
def stop_words() -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return sorted(ENGLISH_STOP_WORDS | _CHAT_WORDS)


async def embed_all(embed: Embed, texts: Sequence[str]) -> np.ndarray:
    """Unit vectors of `texts`, embedded `EMBED_BATCH` at a time."""
    parts = [await embed(texts[at : at + EMBED_BATCH]) for at in range(0, len(texts), EMBED_BATCH)]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    vectors = np.concatenate(parts).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return cast(np.ndarray, vectors / np.where(norms == 0, 1, norms))


def group(vectors: np.ndarray, *, similarity: float) -> list[list[int]]:
    """Row indices grouped by meaning, the largest group first (ties: the earliest row)."""
    from sklearn.cluster import AgglomerativeClustering

    count = len(vectors)
    if count < 2:
        return [[0]] if count else []
    labels = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=1 - similarity
    ).fit_predict(vectors)
    groups: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(row)
    return sorted(groups.values(), key=lambda rows: (-len(rows), rows[0]))


def central(vectors: np.ndarray, rows: Sequence[int]) -> int:
    """The row of `rows` most like the others: the group's most typical question."""
    members = vectors[list(rows)]
    return rows[int(np.argmax((members @ members.T).sum(axis=1)))]


def distinctive_terms(
    groups: Sequence[Sequence[str]], weights: Sequence[Sequence[int]] | None = None
) -> list[list[str]]:
    """Each group's `TERMS` most distinctive words (c-TF-IDF); `weights`: how many times each
    text was asked (default once). A group with no word past the stop words gets none."""
    from sklearn.feature_extraction.text import CountVectorizer

    texts = [text for texts in groups for text in texts]
    times = np.array(
        [n for row in weights for n in row] if weights is not None else [1] * len(texts), float
    )
    vectorizer = CountVectorizer(stop_words=stop_words(), token_pattern=r"(?u)\b[^\W\d_]{2,}\b")
    try:
        per_text = vectorizer.fit_transform(texts)
    except ValueError:  # not one word past the stop words
        return [[] for _ in groups]
    owner = np.repeat(np.arange(len(groups)), [len(texts) for texts in groups])
    membership = np.zeros((len(groups), len(texts)))
    membership[owner, np.arange(len(texts))] = times
    counts = np.asarray(per_text.T.dot(membership.T).T)  # groups x words
    frequency = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    rarity = np.log(1 + counts.sum() / len(groups) / np.maximum(counts.sum(axis=0), 1))
    scores = frequency * rarity
    words = vectorizer.get_feature_names_out()
    return [
        [str(words[column]) for column in np.argsort(-row, kind="stable")[:TERMS] if row[column]]
        for row in scores
    ]
