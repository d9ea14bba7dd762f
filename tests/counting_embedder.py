"""The real embedder, counting what it embeds: to check which texts cost a forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from brain.embedder import Embedder, Kind


class CountingEmbedder:
    """The real model, counting the texts it embeds."""

    def __init__(self, inner: Embedder) -> None:
        self.name, self.dimensions, self._inner = inner.name, inner.dimensions, inner
        self.embedded: list[str] = []
        self.calls: list[int] = []  # the number of texts of each call
        self.kinds: list[Kind] = []  # the kind of text of each call

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        self.embedded.extend(texts)
        self.calls.append(len(texts))
        self.kinds.append(kind)
        return self._inner.embed(texts, kind)
