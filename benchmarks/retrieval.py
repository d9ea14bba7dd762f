"""Retrieval on the Plausible help centre: dense, BM25 and hybrid side by side.

    python benchmarks/retrieval.py                          # dev split, default corpus
    python benchmarks/retrieval.py --corpus /path/to/plausible-docs --concurrency 50
    python benchmarks/retrieval.py --split holdout          # final figures only (see below)

For each retriever: page-level hit@1 and hit@5 (k=5, one passage per page, an expected page
among the first k counts), overall and by kind and language, over the split's answerable cases
(those with ``expect.sources``); then search latency p50/p95/p99 with 1 and with
``--concurrency`` searches in flight, and the fresh ingest time. Each case is searched as a
customer sends it: the last turn, cleaned and with the previous turn when it leans on it
(brain/query.py, as the answerer does); the "hybrid, raw" row searches the last turn as it
came, to show what the query cleanup is worth. Last, how often the best passage's score (the
cosine similarity) clears ``brain.min_confidence``: for answerable cases (else the offline
answerer escalates them) and for cases that expect a low-confidence escalation (off-topic,
unanswerable: there it should not).

The corpus is ingested afresh into a temporary embedded Chroma (the ingest time is part of the
report). ``test.yaml`` and ``holdout.yaml`` are held out: run them only for final figures of a
finished change (benchmarks/data/plausible/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Run as a script from anywhere: the project root is not on sys.path then.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brain.config import BrainConfig  # noqa: E402
from brain.embedder import DEFAULT_EMBEDDER, EMBEDDERS, load_embedder  # noqa: E402
from brain.knowledge import KnowledgeBase, Retriever  # noqa: E402
from brain.query import search_text  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.message import Role, TranscriptEntry  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "plausible"
CORPUS = ROOT.parent / "shared" / "corpora" / "plausible-docs"
K = 5
LANGUAGES = {None: "English", "de": "German", "es": "Spanish", "fr": "French"}


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    kind: str
    language: str
    query: str  # as the answerer searches it
    raw: str  # the last turn as it came
    sources: frozenset[str]  # empty: a case that expects a low-confidence escalation


@dataclass(frozen=True, slots=True)
class Mode:
    label: str
    retrievers: tuple[Retriever, ...]
    query: Callable[[Case], str]


MODES = (
    Mode("dense", ("dense",), lambda case: case.query),
    Mode("bm25", ("bm25",), lambda case: case.query),
    Mode("hybrid", ("dense", "bm25"), lambda case: case.query),
    Mode("hybrid, raw", ("dense", "bm25"), lambda case: case.raw),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the Plausible docs folder")
    parser.add_argument("--split", choices=["dev", "test", "holdout"], default="dev")
    parser.add_argument("--embedder", choices=list(EMBEDDERS), default=DEFAULT_EMBEDDER)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10, help="latency passes over the cases")
    parser.add_argument("--misses", action="store_true", help="list hybrid's misses at 5")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the knowledge base here and re-ingest only changes (default: a fresh one)",
    )
    args = parser.parse_args()
    configure_logging("warning", "console", [])
    cases, unanswerable = load_cases(DATA / f"{args.split}.yaml")
    embedder = load_embedder(args.embedder)
    print(
        f"corpus {args.corpus.resolve()}  split {args.split} ({len(cases)} answerable cases)  "
        f"embedder {args.embedder}  machine {os.cpu_count()} cores, shared with other "
        "workloads (figures are noisy)\n"
    )
    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        ingesting = KnowledgeBase(data_dir, embedder=embedder)
        report = ingesting.ingest([args.corpus])
        ingesting.close()
        print(
            f"ingest: {report.seconds:.1f} s, {report.added} files added, {report.unchanged} "
            f"unchanged, {report.chunks} chunks embedded (target for a fresh one: < 60 s)\n"
        )
        results = {
            mode.label: asyncio.run(run(mode, data_dir, embedder, cases, unanswerable, args))
            for mode in MODES
        }
    print_quality(cases, {label: result.pages for label, result in results.items()})
    print_latency({label: result.latency for label, result in results.items()}, args.concurrency)
    print_confidence(results)
    if args.misses:
        print_misses(cases, results["hybrid"].pages)


@dataclass(frozen=True, slots=True)
class Result:
    pages: list[list[str]]  # per answerable case, best first
    latency: dict[int, list[float]]  # ms, per number of searches in flight
    answerable_scores: list[float]  # the best passage's score, per answerable case
    unanswerable_scores: list[float]  # the same for the low-confidence cases


def load_cases(path: Path) -> tuple[list[Case], list[Case]]:
    """The answerable cases, and those that expect a low-confidence escalation."""
    cases, unanswerable = [], []
    for case in yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]:
        sources = case["expect"].get("sources")
        if not sources and case["expect"].get("reason") != "low_confidence":
            continue
        *earlier, last = case["turns"]
        history = [TranscriptEntry(role=Role.CUSTOMER, text=turn) for turn in earlier]
        (cases if sources else unanswerable).append(
            Case(
                name=case["name"],
                kind=case["kind"],
                language=LANGUAGES[case.get("language")],
                query=search_text(last, history),
                raw=last,
                sources=frozenset(sources or ()),
            )
        )
    return cases, unanswerable


async def run(
    mode: Mode,
    data_dir: Path,
    embedder: Any,
    cases: list[Case],
    unanswerable: list[Case],
    args: argparse.Namespace,
) -> Result:
    kb = KnowledgeBase(data_dir, embedder=embedder, retrievers=mode.retrievers)
    try:
        queries = [mode.query(case) for case in cases]
        # The first searches build the lexical index and warm the embedder (its first calls
        # are slow); latency is timed after the quality pass.
        found = [await kb.search(query, k=K) for query in queries]
        others = [await kb.search(mode.query(case), k=K) for case in unanswerable]
        gc.freeze()  # as a gateway process does once started (gateway/app/processes.py)
        latency: dict[int, list[float]] = {}
        for concurrency in sorted({1, args.concurrency}):
            latency[concurrency] = await timed(kb, queries * args.rounds, concurrency)
    finally:
        kb.close()
    return Result(
        [[passage.source for passage in passages] for passages in found],
        latency,
        [passages[0].score if passages else 0.0 for passages in found],
        [passages[0].score if passages else 0.0 for passages in others],
    )


async def timed(kb: KnowledgeBase, queries: Sequence[str], concurrency: int) -> list[float]:
    """Per-search latency (ms) with ``concurrency`` searches always in flight."""
    pending = iter(queries)
    latencies: list[float] = []

    async def searcher() -> None:
        for query in pending:
            started = time.perf_counter()
            await kb.search(query, k=K)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(searcher() for _ in range(concurrency)))
    return latencies


def print_quality(cases: list[Case], found: dict[str, list[list[str]]]) -> None:
    groups: list[tuple[str, Callable[[Case], bool]]] = [("all", lambda case: True)]
    groups += [(f"kind {kind}", _is_kind(kind)) for kind in sorted({c.kind for c in cases})]
    groups += [(f"lang {lang}", _is_language(lang)) for lang in LANGUAGES.values()]
    labels = list(found)
    print(f"Page-level hit@1 / hit@5, k={K}, one passage per page")
    print(f"{'cases':<22}{'n':>4}" + "".join(f"{label:>18}" for label in labels))
    for name, keep in groups:
        rows = [i for i, case in enumerate(cases) if keep(case)]
        if not rows:
            continue
        cells = []
        for label in labels:
            hit1 = sum(_hit(cases[i], found[label][i], 1) for i in rows) / len(rows)
            hit5 = sum(_hit(cases[i], found[label][i], K) for i in rows) / len(rows)
            cells.append(f"{hit1:.2f} / {hit5:.2f}")
        print(f"{name:<22}{len(rows):>4}" + "".join(f"{cell:>18}" for cell in cells))


def print_latency(latency: dict[str, dict[int, list[float]]], concurrency: int) -> None:
    print(f"\nSearch latency (ms), k={K}; target: hybrid p95 <= 50 ms at {concurrency} concurrent")
    print(f"{'retriever':<14}{'in flight':>10}{'searches':>10}{'p50':>9}{'p95':>9}{'p99':>9}")
    for label, by_concurrency in latency.items():
        for inflight, values in by_concurrency.items():
            p50, p95, p99 = _percentiles(values)
            print(f"{label:<14}{inflight:>10}{len(values):>10}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}")


def print_confidence(results: dict[str, Result]) -> None:
    threshold = BrainConfig().min_confidence
    print(f"\nBest passage's score >= brain.min_confidence ({threshold:.2f})")
    print(f"{'retriever':<14}{'answerable (want high)':>26}{'low-confidence cases (want low)':>34}")
    for label, result in results.items():
        cells = []
        for scores in (result.answerable_scores, result.unanswerable_scores):
            above = sum(score >= threshold for score in scores)
            cells.append(f"{above}/{len(scores)} = {above / max(len(scores), 1):.2f}")
        print(f"{label:<14}{cells[0]:>26}{cells[1]:>34}")


def print_misses(cases: list[Case], found: list[list[str]]) -> None:
    print("\nhybrid: missed at 5")
    for case, pages in zip(cases, found, strict=True):
        if not _hit(case, pages, K):
            print(f"  {case.name} [{case.kind}] -> {', '.join(pages[:3])}")


def _hit(case: Case, pages: list[str], k: int) -> bool:
    return any(page in case.sources for page in pages[:k])


def _is_kind(kind: str) -> Callable[[Case], bool]:
    return lambda case: case.kind == kind


def _is_language(language: str) -> Callable[[Case], bool]:
    return lambda case: case.language == language


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


if __name__ == "__main__":
    main()
