"""Fusing the retrievers' rankings by page, and taking the top k diverse by page.

Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009) adds weight / (RRF_K + rank)
over the rankings an item appears in: it needs no calibration between BM25 scores and cosine
similarities, and an item both retrievers rank well beats one that only one ranks first.

It is done twice: over pages (each ranking reduced to its distinct pages, in order), which
orders the result, then over chunks, which orders each page's passages. Page first, because a
page whose best chunk for the dense retriever is not the one BM25 likes is still one page that
both found. The lexical ranking is weighted by how much of the query its vocabulary can read
(squared), so a German question over English docs is ranked by the multilingual embedding.
On the dev split of benchmarks/data/plausible (benchmarks/retrieval.py) page-level fusion with
RRF_K = 10 beat chunk-level fusion and the customary RRF_K = 60 by 2 to 5 cases of 66 at hit@1.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

RRF_K = 10

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True, slots=True)
class FusedPage(Generic[Key]):
    page: str
    chunks: list[Key]  # best first
    found_by: tuple[str, ...]  # the rankings that hold one of its chunks


def fuse_by_page(
    rankings: Mapping[str, Sequence[Key]],
    page_of: Callable[[Key], str],
    weights: Mapping[str, float] | None = None,
) -> list[FusedPage[Key]]:
    """The pages of all rankings, best first, each with its chunks best first."""
    pages = reciprocal_rank_fusion(
        {name: list(dict.fromkeys(map(page_of, ranking))) for name, ranking in rankings.items()},
        weights,
    )
    chunks: dict[str, list[Key]] = {}
    for chunk in reciprocal_rank_fusion(rankings, weights):
        chunks.setdefault(page_of(chunk), []).append(chunk)
    found_by: dict[str, list[str]] = {}
    for name, ranking in rankings.items():
        for page in dict.fromkeys(map(page_of, ranking)):
            found_by.setdefault(page, []).append(name)
    return [FusedPage(page, chunks[page], tuple(found_by[page])) for page in pages]


def top(
    pages: Sequence[FusedPage[Key]], k: int, per_page: int | None
) -> list[tuple[Key, FusedPage[Key]]]:
    """The first ``k`` chunks, page by page, at most ``per_page`` from each (None: all)."""
    taken: list[tuple[Key, FusedPage[Key]]] = []
    for page in pages:
        for chunk in page.chunks[:per_page]:
            if len(taken) == k:
                return taken
            taken.append((chunk, page))
    return taken


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[Key]], weights: Mapping[str, float] | None = None
) -> list[Key]:
    """The items of all rankings, best fused score first; ties keep the order they were met."""
    scores: dict[Key, float] = {}
    for name, ranking in rankings.items():
        weight = 1.0 if weights is None else weights.get(name, 1.0)
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (RRF_K + rank)
    return sorted(scores, key=lambda key: scores[key], reverse=True)
