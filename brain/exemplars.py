"""Nearest-exemplar matching in the embedder's vector space.

Intents (someone asks for a person, wants staff to act on the account...) and procedure
triggers are recognised by how close a message lands to a few example phrasings of each
label, in the same multilingual space the knowledge base searches, rather than by listed
words: "could a human look at this" and "können Sie mich mit jemandem verbinden" land near
"I want to talk to a person" without sharing a word with it. It runs offline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Texts in, L2-normalised rows out (KnowledgeBase.embed).
Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class Match:
    """The closest exemplar of one label and its cosine similarity to the message."""

    label: str
    score: float
    exemplar: str


class ExemplarIndex:
    """Labelled example phrasings and their vectors; `match` ranks the labels for a vector."""

    def __init__(self, labels: Sequence[str], texts: Sequence[str], vectors: np.ndarray) -> None:
        if not len(labels) == len(texts) == len(vectors):
            raise ValueError("labels, texts and vectors must have the same length")
        self.labels = tuple(dict.fromkeys(labels))
        # Rows grouped by label, so `match` takes each label's best with one argmax per label
        # (a Python loop over every exemplar cost 130 µs a message).
        order = sorted(range(len(labels)), key=lambda row: self.labels.index(labels[row]))
        self._texts = [texts[row] for row in order]
        self._vectors = np.asarray(vectors, dtype=np.float32)[order] if order else vectors
        self._segments: list[tuple[str, int, int]] = []
        start = 0
        for label in self.labels:
            stop = start + labels.count(label)
            self._segments.append((label, start, stop))
            start = stop

    @classmethod
    async def build(cls, exemplars: Mapping[str, Sequence[str]], embed: Embed) -> ExemplarIndex:
        """Embeds every exemplar once (at start-up, not per message)."""
        labels = [label for label, texts in exemplars.items() for _ in texts]
        texts = [text for group in exemplars.values() for text in group]
        if not texts:
            return cls([], [], np.empty((0, 0), dtype=np.float32))
        return cls(labels, texts, await embed(texts))

    def match(self, vector: np.ndarray) -> list[Match]:
        """Each label's best exemplar for the (normalised) `vector`, best label first."""
        if not self._texts:
            return []
        scores = self._vectors @ np.asarray(vector, dtype=np.float32)
        best = []
        for label, start, stop in self._segments:
            row = start + int(np.argmax(scores[start:stop]))
            best.append(Match(label, float(scores[row]), self._texts[row]))
        return sorted(best, key=lambda match: -match.score)
