"""Knowledge-base ingest timings: fresh ingest, no-change re-run and embedding throughput.

    python benchmarks/ingest.py /work/shared/corpora/plausible-docs [--embedder minilm]

Runs on embedded Chroma in a temporary folder, so no existing knowledge base is touched.
Targets on a 2-core machine for that corpus: fresh ingest under 60 s, no-change re-run
under 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Run as a script from anywhere: the project root is not on sys.path then.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brain.embedder import DEFAULT_EMBEDDER, EMBEDDERS, Embedder, Kind, load_embedder
from brain.knowledge import KnowledgeBase

QUERIES = [
    "How do I add a second website?",
    "Can I pay by bank transfer?",
    "Why are my stats not showing up?",
    "How do I exclude my own visits?",
    "Is there an API to export data?",
]


class TimedEmbedder:
    """Adds up the time spent embedding, to separate it from chunking and Chroma writes."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self.name = embedder.name
        self.dimensions = embedder.dimensions
        self.seconds = 0.0
        self.texts = 0

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        started = time.perf_counter()
        vectors = self._embedder.embed(texts, kind)
        self.seconds += time.perf_counter() - started
        self.texts += len(texts)
        return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="folders or files to ingest")
    parser.add_argument("--embedder", choices=list(EMBEDDERS), default=DEFAULT_EMBEDDER)
    args = parser.parse_args()

    started = time.perf_counter()
    embedder = TimedEmbedder(load_embedder(args.embedder))
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as data_dir:
        kb = KnowledgeBase(Path(data_dir), embedder=embedder)
        fresh = kb.ingest(args.paths)
        embed_seconds, embedded = embedder.seconds, embedder.texts
        again = kb.ingest(args.paths)
        latencies = asyncio.run(search_latencies(kb))
        kb.close()

        reopened = KnowledgeBase(Path(data_dir), embedder=args.embedder)
        started = time.perf_counter()
        stale = reopened.is_stale(args.paths)
        stale_seconds = time.perf_counter() - started
        reopened.close()

    rows = [
        ("machine", f"{os.cpu_count()} cores"),
        ("embedder", args.embedder),
        ("files", f"{fresh.added}"),
        ("chunks", f"{fresh.chunks}"),
        ("model load", f"{load_seconds:.2f} s"),
        ("fresh ingest", f"{fresh.seconds:.2f} s (target < 60 s)"),
        ("  of which embedding", f"{embed_seconds:.2f} s"),
        ("embedding throughput", f"{embedded / embed_seconds:.1f} texts/s (chunks and labels)"),
        ("ingest throughput", f"{fresh.chunks / fresh.seconds:.1f} chunks/s"),
        ("no-change re-run", f"{again.seconds:.2f} s, {again.unchanged} unchanged (< 10 s)"),
        ("is_stale, new instance", f"{stale_seconds:.2f} s (stale={stale})"),
        ("search p50 / max", f"{statistics.median(latencies):.1f} / {max(latencies):.1f} ms"),
    ]
    for name, value in rows:
        print(f"{name:<24}{value}")


async def search_latencies(kb: KnowledgeBase) -> list[float]:
    latencies = []
    for query in QUERIES * 4:
        started = time.perf_counter()
        await kb.search(query)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


if __name__ == "__main__":
    main()
