"""Brain quality on a real help centre: retrieval hit@k per embedder and language, escalation
precision and recall per reason, prompt-injection cases passed.

    python benchmarks/brain_quality.py                       # both embedders, then decisions
    python benchmarks/brain_quality.py --embedder minilm --skip-decisions
    python benchmarks/brain_quality.py --calibrate          # min_confidence, per embedder

The labelled set is benchmarks/data/plausible_questions.yaml over the Plausible help centre
(../shared/corpora/plausible-docs). Each embedder's knowledge base lives in its own folder under
``--cache`` (default .benchmarks/brain_quality), so a re-run embeds only what changed.
Decisions go through the real pipeline of a runtime built like `gateway ask --json` (embedded
bus and store; the answerer the runtime picks: Claude when ANTHROPIC_API_KEY is set, else the
offline one), one fresh conversation per case. Reason codes are compared as strings, so new
codes show up as rows of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Run as a script from anywhere: the project root is not on sys.path then.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brain.config import BrainConfig  # noqa: E402
from brain.embedder import DEFAULT_EMBEDDER, EMBEDDERS, load_embedder  # noqa: E402
from brain.knowledge import KnowledgeBase  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402

QUESTIONS = ROOT / "benchmarks" / "data" / "plausible_questions.yaml"
CALIBRATION = ROOT / "benchmarks" / "data" / "calibration.yaml"
SAMPLE_KB = ROOT / "config" / "knowledge"
CORPUS = ROOT.parent / "shared" / "corpora" / "plausible-docs"
CACHE = ROOT / ".benchmarks" / "brain_quality"  # .benchmarks/ is git-ignored
DEPTH = 40  # passages fetched per question, enough for 5 distinct pages


@dataclass(frozen=True, slots=True)
class Ranked:
    question: dict[str, Any]
    pages: list[str]  # distinct sources, best first
    top_score: float

    def rank(self) -> int | None:
        expected = set(self.question["sources"])
        return next((i for i, page in enumerate(self.pages, 1) if page in expected), None)

    def hit(self, k: int) -> bool:
        rank = self.rank()
        return rank is not None and rank <= k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument("--cache", type=Path, default=CACHE, help="knowledge bases kept here")
    parser.add_argument(
        "--embedder",
        choices=[*EMBEDDERS, "all"],
        default="all",
        help="embedder(s) to compare on retrieval (default: all, side by side)",
    )
    parser.add_argument(
        "--decision-embedder",
        choices=list(EMBEDDERS),
        default=DEFAULT_EMBEDDER,
        help="embedder of the runtime that makes the decisions (default: the config default)",
    )
    parser.add_argument("--skip-decisions", action="store_true", help="retrieval only")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="print the best-passage scores of in-domain and off-topic questions on the sample "
        "help centre (benchmarks/data/calibration.yaml), per embedder, and stop",
    )
    args = parser.parse_args()
    configure_logging("warning", "console", [])

    labels = yaml.safe_load(args.questions.read_text(encoding="utf-8"))
    names = list(EMBEDDERS) if args.embedder == "all" else [args.embedder]
    if args.calibrate:
        calibration = yaml.safe_load(CALIBRATION.read_text(encoding="utf-8"))
        for name in names:
            asyncio.run(calibrate(name, args.cache, calibration))
        return
    print(f"corpus {args.corpus}  questions {args.questions.name}  cache {args.cache}\n")

    rankings = {name: asyncio.run(retrieve(name, args, labels["retrieval"])) for name in names}
    print_retrieval(rankings)
    print_twins(rankings)
    if not args.skip_decisions:
        asyncio.run(decide(args, labels["escalation"], labels["injection"]))


# Retrieval


async def retrieve(name: str, args: argparse.Namespace, questions: list[dict]) -> list[Ranked]:
    started = time.perf_counter()
    embedder = load_embedder(name)
    loaded = time.perf_counter() - started
    kb = KnowledgeBase(args.cache / name, embedder=embedder)
    try:
        report = kb.ingest([args.corpus])
        started = time.perf_counter()
        found = await asyncio.gather(*(kb.search(q["question"], k=DEPTH) for q in questions))
        searched = time.perf_counter() - started
    finally:
        kb.close()
    print(
        f"{name}: model load {loaded:.1f} s; ingest {report.seconds:.1f} s "
        f"({report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.chunks} chunks embedded); {len(questions)} searches in {searched:.2f} s"
    )
    ranked = []
    for question, passages in zip(questions, found, strict=True):
        pages = list(dict.fromkeys(passage.source for passage in passages))
        ranked.append(Ranked(question, pages, passages[0].score if passages else 0.0))
    return ranked


def print_retrieval(rankings: dict[str, list[Ranked]]) -> None:
    groups = {
        "all": lambda q: True,
        "English": lambda q: q["lang"] == "en",
        "non-English": lambda q: q["lang"] != "en",
        "  German": lambda q: q["lang"] == "de",
        "  Spanish": lambda q: q["lang"] == "es",
        "  French": lambda q: q["lang"] == "fr",
    }
    names = list(rankings)
    print("\nRetrieval (hit@k: an expected page among the first k distinct pages)")
    header = f"{'questions':<14}{'n':>4}" + "".join(
        f"{name + ' hit@1/@5/MRR':>34}" for name in names
    )
    print(header)
    for label, keep in groups.items():
        cells = []
        count = 0
        for name in names:
            rows = [r for r in rankings[name] if keep(r.question)]
            count = len(rows)
            cells.append(f"{_ratio(rows, 1):>12}{_ratio(rows, 5):>12}{_mrr(rows):>10.3f}")
        print(f"{label:<14}{count:>4}" + "".join(f"{cell:>34}" for cell in cells))


def print_twins(rankings: dict[str, list[Ranked]]) -> None:
    """Each translated question against its own English twin, pair by pair."""
    print("\nTranslated questions against their English twins (same pairs)")
    print(
        f"{'embedder':<20}{'pairs':>6}{'EN hit@1':>10}{'XX hit@1':>10}{'EN hit@5':>10}"
        f"{'XX hit@5':>10}{'XX top page = EN top page':>28}"
    )
    for name, ranked in rankings.items():
        by_id = {r.question["id"]: r for r in ranked}
        pairs = [(by_id[r.question["twin"]], r) for r in ranked if r.question.get("twin")]
        english = [en for en, _ in pairs]
        translated = [xx for _, xx in pairs]
        same_top = sum(
            bool(en.pages and xx.pages and en.pages[0] == xx.pages[0]) for en, xx in pairs
        )
        print(
            f"{name:<20}{len(pairs):>6}{_ratio(english, 1):>10}{_ratio(translated, 1):>10}"
            f"{_ratio(english, 5):>10}{_ratio(translated, 5):>10}"
            f"{f'{same_top}/{len(pairs)}':>28}"
        )
    for name, ranked in rankings.items():
        misses = [r for r in ranked if not r.hit(5)]
        if misses:
            print(f"\n{name}: missed at 5 ({len(misses)})")
            for r in misses:
                print(
                    f"  {r.question['id']} [{r.question['lang']}] {r.question['question'][:60]!r}"
                    f" -> {', '.join(r.pages[:3])}"
                )


def _ratio(rows: Sequence[Ranked], k: int) -> str:
    if not rows:
        return "-"
    return f"{sum(r.hit(k) for r in rows) / len(rows):.2f}"


def _mrr(rows: Sequence[Ranked]) -> float:
    if not rows:
        return 0.0
    return statistics.fmean(1 / rank if (rank := r.rank()) else 0.0 for r in rows)


# Calibration of brain.min_confidence


async def calibrate(name: str, cache: Path, questions: dict[str, list[str]]) -> None:
    kb = KnowledgeBase(cache / f"{name}-sample", embedder=name)
    try:
        kb.ingest([SAMPLE_KB])
        scores = {
            group: [
                found[0].score if found else 0.0
                for found in await asyncio.gather(*(kb.search(q, k=1) for q in texts))
            ]
            for group, texts in questions.items()
        }
    finally:
        kb.close()
    inside, outside = sorted(scores["in_domain"]), sorted(scores["off_topic"])
    current = BrainConfig().min_confidence
    midpoint = (inside[0] + outside[-1]) / 2
    print(f"{name} on {SAMPLE_KB.name}/ (best passage score)")
    print(
        f"  in-domain  n={len(inside):>3}  min {inside[0]:.3f}  p10 {_pct(inside, 10):.3f}"
        f"  median {statistics.median(inside):.3f}"
    )
    print(
        f"  off-topic  n={len(outside):>3}  max {outside[-1]:.3f}  p90 {_pct(outside, 90):.3f}"
        f"  median {statistics.median(outside):.3f}"
    )
    for threshold in (current, midpoint):
        wrong_in = sum(score < threshold for score in inside)
        wrong_out = sum(score >= threshold for score in outside)
        print(
            f"  threshold {threshold:.3f}: {wrong_in} in-domain below, "
            f"{wrong_out} off-topic at or above"
        )


def _pct(values: list[float], percent: int) -> float:
    return values[min(len(values) - 1, len(values) * percent // 100)]


# Decisions: escalation and injection through the pipeline


async def decide(args: argparse.Namespace, cases: list[dict], injections: list[dict]) -> None:
    from adapters.rest import answer_body
    from brain.config import KnowledgeConfig
    from gateway.app.runtime import Runtime
    from gateway.app.settings import GatewayConfig
    from gateway.message import Inbound, conversation_key

    config = GatewayConfig(
        data_dir=args.cache / args.decision_embedder,
        knowledge=KnowledgeConfig(sources=[str(args.corpus)], embedder=args.decision_embedder),
    )

    async with Runtime.open(config, embedded=True) as runtime:
        await runtime.ingest_if_stale()
        answerer = type(runtime.answerer).__name__

        async def ask(text: str) -> dict[str, Any]:
            conversation_id = f"bench-{uuid.uuid4().hex[:8]}"
            message = Inbound(
                channel="rest",
                conversation=conversation_key("rest", conversation_id),
                sender="benchmark",
                text=text,
                provider_message_id=uuid.uuid4().hex,
            )
            return answer_body(conversation_id, await runtime.pipeline.handle(message))

        decided = [await ask(case["question"]) for case in cases]
        injected = [await ask(case["question"]) for case in injections]

    print(
        f"\nDecisions: answerer {answerer}, embedder {args.decision_embedder}, "
        f"min_confidence {config.brain.min_confidence}"
    )
    print_escalation(cases, decided)
    print_injection(injections, injected)


def print_escalation(cases: list[dict], bodies: list[dict[str, Any]]) -> None:
    expected = [case.get("reason") if case["expected"] == "escalate" else None for case in cases]
    predicted = [
        (body["decision"]["reason"] or "?") if body["decision"]["action"] == "escalate" else None
        for body in bodies
    ]
    print("\nEscalation (per reason: predicted = escalated with that reason)")
    print(
        f"{'reason':<22}{'expected':>9}{'predicted':>10}{'correct':>9}{'precision':>11}"
        f"{'recall':>8}"
    )
    reasons = sorted({r for r in expected + predicted if r is not None})
    for reason in reasons:
        want = sum(e == reason for e in expected)
        got = sum(p == reason for p in predicted)
        both = sum(e == p == reason for e, p in zip(expected, predicted, strict=True))
        print(f"{reason:<22}{want:>9}{got:>10}{both:>9}{_div(both, got):>11}{_div(both, want):>8}")
    want = sum(e is not None for e in expected)
    got = sum(p is not None for p in predicted)
    both = sum(e is not None and p is not None for e, p in zip(expected, predicted, strict=True))
    exact = sum(e is not None and e == p for e, p in zip(expected, predicted, strict=True))
    print(
        f"{'escalate (any reason)':<22}{want:>9}{got:>10}{both:>9}{_div(both, got):>11}"
        f"{_div(both, want):>8}"
    )
    print(
        f"{'escalate, right reason':<22}{want:>9}{got:>10}{exact:>9}{_div(exact, got):>11}"
        f"{_div(exact, want):>8}"
    )
    answered = sum(e is None and p is None for e, p in zip(expected, predicted, strict=True))
    controls = sum(e is None for e in expected)
    print(f"answerable controls answered: {answered}/{controls}")
    wrong = [
        (case, body)
        for case, e, p, body in zip(cases, expected, predicted, bodies, strict=True)
        if e != p
    ]
    if wrong:
        print(f"\nMismatches ({len(wrong)})")
        for case, body in wrong:
            decision = body["decision"]
            got_label = decision["reason"] if decision["action"] == "escalate" else "answer"
            print(
                f"  {case['id']} want {case.get('reason') or 'answer':<18} got {got_label:<18}"
                f" conf {decision['confidence']:.2f}  {case['question'][:55]!r}"
            )


def print_injection(cases: list[dict], bodies: list[dict[str, Any]]) -> None:
    passed = 0
    failures = []
    for case, body in zip(cases, bodies, strict=True):
        reply = " ".join(reply["text"] for reply in body["replies"]).lower()
        leaked = [phrase for phrase in case["must_not_contain"] if phrase.lower() in reply]
        if leaked:
            failures.append((case, leaked))
        else:
            passed += 1
    actions = Counter(body["decision"]["reason"] or body["decision"]["action"] for body in bodies)
    print(
        f"\nInjection: {passed}/{len(cases)} passed (no forbidden phrase in the reply); "
        f"decisions {dict(actions)}"
    )
    for case, leaked in failures:
        print(f"  {case['id']} failed: reply contains {leaked}")


def _div(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "-"


if __name__ == "__main__":
    main()
