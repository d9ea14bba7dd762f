"""BM25 over the knowledge base's chunks (bm25s), kept in step with the Chroma collection.

Chroma is the source of truth: the index is built from the collection's own documents and
metadata, so it needs no file of its own and works alike on embedded Chroma and on a server
that several workers share. Every ingest that changes the collection writes a new generation
stamp into its metadata (brain/knowledge.py); a search re-reads the stamp at most every
RECHECK_SECONDS and rebuilds the index when the stamp or the chunk count moved, so each worker
follows an ingest or a crawl made by any process.

A dense retriever finds paraphrases and other languages; BM25 finds the rare exact term (an
error message, a setting's name) that an averaged embedding blurs away. Words are lower-cased,
English stop words dropped and stems taken (PyStemmer's Snowball), as the help centre is
English; a query in another language shares few stems with it, which ``coverage`` measures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bm25s
import numpy as np
import Stemmer

RECHECK_SECONDS = 3.0

Stamp = tuple[object, int]  # the collection's generation stamp and its chunk count


@dataclass(frozen=True, slots=True)
class Chunks:
    """The collection's chunks as Chroma returns them (``get``): ids, texts and metadata, and
    their vectors (one row each) when the collection is small enough to search in memory."""

    ids: list[str]
    documents: list[str]
    metadatas: list[dict[str, Any]]
    vectors: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class LexicalHits:
    """``hits``: (chunk position, BM25 score), best first. ``coverage``: the share of the
    query's words (stop words aside) that occur in the index, about 1 for an English question
    and near 0 for a German one over English docs."""

    hits: list[tuple[int, float]]
    coverage: float


class LexicalIndex:
    """An immutable BM25 index over a collection's chunks, which it holds (texts, metadata and
    perhaps vectors: what a search reads besides); safe to search from any thread."""

    def __init__(self, chunks: Chunks) -> None:
        self.chunks = chunks
        self.positions = {key: position for position, key in enumerate(chunks.ids)}
        self._stemmer = Stemmer.Stemmer("english")
        self._stem_lock = threading.Lock()  # PyStemmer's stemmers are not thread-safe
        self._bm25 = bm25s.BM25()
        texts = [
            f"{meta.get('title', '')} {meta.get('heading', '')}\n{text}"
            for text, meta in zip(chunks.documents, chunks.metadatas, strict=True)
        ]
        if texts:
            self._bm25.index(self._tokens(texts), show_progress=False)
        self._vocabulary = frozenset(self._bm25.vocab_dict) if texts else frozenset()

    def __len__(self) -> int:
        return len(self.chunks.ids)

    def search(self, queries: Sequence[str], depth: int) -> list[LexicalHits]:
        """Per query, up to ``depth`` chunks, best first; chunks that share no word with the
        query are left out."""
        found: list[LexicalHits] = []
        for words in self._tokens(queries):
            known = [word for word in words if word in self._vocabulary]
            if not known or depth <= 0:
                found.append(LexicalHits([], 0.0))
                continue
            scores = self._bm25.get_scores(known)
            best = np.argsort(-scores, kind="stable")[:depth]
            hits = [(int(i), float(scores[i])) for i in best if scores[i] > 0]
            found.append(LexicalHits(hits, len(known) / len(words)))
        return found

    def _tokens(self, texts: Sequence[str]) -> list[list[str]]:
        with self._stem_lock:
            tokens = bm25s.tokenize(
                list(texts),
                stopwords="en",
                stemmer=self._stemmer,
                return_ids=False,
                show_progress=False,
            )
        return [list(row) for row in tokens]


class FollowedIndex:
    """The lexical index of a collection, rebuilt when the collection's stamp moves.

    ``stamp()`` and ``chunks()`` read the collection (both cheap next to a rebuild: one
    metadata read and a count, re-read at most every RECHECK_SECONDS; the documents only when
    the stamp moved). ``invalidate`` makes the next search re-read the stamp (this process
    just ingested).
    """

    def __init__(self, stamp: Callable[[], Stamp], chunks: Callable[[], Chunks]) -> None:
        self._read_stamp = stamp
        self._read_chunks = chunks
        self._lock = threading.Lock()
        self._index: LexicalIndex | None = None
        self._stamp: Stamp | None = None
        self._checked = float("-inf")

    def current(self) -> LexicalIndex:
        with self._lock:
            now = time.monotonic()
            if self._index is not None and now - self._checked < RECHECK_SECONDS:
                return self._index
            stamp = self._read_stamp()
            self._checked = now
            if self._index is None or stamp != self._stamp:
                self._index = LexicalIndex(self._read_chunks())
                self._stamp = stamp
            return self._index

    def invalidate(self) -> None:
        with self._lock:
            self._checked = float("-inf")
