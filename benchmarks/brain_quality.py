"""Brain quality on the labelled Plausible conversations: retrieval, cited pages, escalation
and injections, per split, with the offline answerer.

    python benchmarks/brain_quality.py                   # dev: tune and inspect here
    python benchmarks/brain_quality.py --show-failures   # each failed dev case's diff
    python benchmarks/brain_quality.py --split final     # dev, test, holdout: final figures
    python benchmarks/brain_quality.py --split dev --embedder e5-small \
        --brain benchmarks/data/plausible/calibration-e5-small.yaml  # another embedder's scale

The cases are the scenario files benchmarks/data/plausible/{dev,test,holdout}.yaml (README
there) and run through `gateway test`'s runner: the real pipeline in process, one
conversation per case, decisions taken on the final turn, over the Plausible help centre
(--corpus, default ../shared/corpora/plausible-docs) ingested into Chroma under --cache (a
re-run embeds only what changed). Retrieval is measured apart, on
`KnowledgeBase.search(final turn, k=5)`: hit@k is an expected page among the pages of the
first k passages. The test and holdout splits are for final figures only: their failures are
never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

# Run as a script from anywhere: the project root is not on sys.path then.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from brain.config import BrainConfig, KnowledgeConfig  # noqa: E402
from brain.embedder import DEFAULT_EMBEDDER, EMBEDDERS  # noqa: E402
from gateway.app.scenarios.checks import cites  # noqa: E402
from gateway.app.scenarios.model import Case, Suite, load  # noqa: E402
from gateway.app.scenarios.report import diff  # noqa: E402
from gateway.app.scenarios.runner import CaseResult, ScenarioRunner, open_runner  # noqa: E402
from gateway.app.settings import GatewayConfig  # noqa: E402
from gateway.config import read_config  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "plausible"
CORPUS = ROOT.parent / "shared" / "corpora" / "plausible-docs"
CACHE = ROOT / ".benchmarks" / "brain_quality"  # .benchmarks/ is git-ignored
K = 5
# The held-out halves come after dev: test (held out, but seen in reports since 2026-12-02)
# and holdout (written apart on 2026-12-03, by writers who saw neither the cases nor the bot).
SPLITS = ("dev", "test", "holdout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the help-centre folder")
    parser.add_argument(
        "--split", choices=[*SPLITS, "final"], default="dev", help="final: all three, in order"
    )
    parser.add_argument("--embedder", choices=list(EMBEDDERS), default=DEFAULT_EMBEDDER)
    parser.add_argument(
        "--brain",
        type=Path,
        help="a YAML file of brain settings (as under `brain:` in gateway.yaml), e.g. the "
        "thresholds calibrated for another embedder",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help=f"the knowledge base lives here (default: {CACHE}/EMBEDDER, one per vector space)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="cases run at once")
    parser.add_argument(
        "--deadline", type=float, default=30.0, help="brain.deadline in seconds (default 30)"
    )
    parser.add_argument(
        "--show-failures", action="store_true", help="the diff of each failed dev case"
    )
    args = parser.parse_args()
    if not args.corpus.is_dir():
        parser.error(f"no corpus at {args.corpus}")
    args.cache = args.cache or CACHE / args.embedder
    configure_logging("warning", "console", [])
    splits = list(SPLITS) if args.split == "final" else [args.split]
    asyncio.run(measure(args, splits))


async def measure(args: argparse.Namespace, splits: list[str]) -> None:
    config = GatewayConfig(
        data_dir=args.cache,
        knowledge=KnowledgeConfig(sources=[str(args.corpus.resolve())], embedder=args.embedder),
        # The offline answerer, whatever the environment; the deadline is --deadline, so a
        # loaded machine's slow search is not counted as a decision (latency has benchmarks).
        brain=brain_settings(args.brain).model_copy(
            update={"anthropic_api_key": None, "deadline": args.deadline}
        ),
    )
    started = time.perf_counter()
    async with open_runner(config) as runner:
        chunks = await asyncio.to_thread(runner.knowledge.count)
        ready = time.perf_counter() - started
        print(
            f"corpus {args.corpus} ({chunks} chunks, ready in {ready:.1f} s), "
            f"{runner.answerer} answerer, embedder {config.knowledge.embedder}, "
            f"min_confidence {config.brain.min_confidence}, deadline {config.brain.deadline:g} s"
            + (f", brain settings from {args.brain}" if args.brain else "")
        )
        for split in splits:
            suite = load(DATA / f"{split}.yaml")
            started = time.perf_counter()
            ranked = await retrieve(runner, suite.cases)
            results = await runner.run([suite], concurrency=args.concurrency)
            seconds = time.perf_counter() - started
            print(f"\n== {split} split: {len(suite.cases)} cases, {seconds:.1f} s")
            report(suite, ranked, results)
            if args.show_failures and split == "dev":
                show_failures(results)


def brain_settings(path: Path | None) -> BrainConfig:
    if path is None:
        return BrainConfig()
    return read_config(path.read_text(encoding="utf-8"), BrainConfig, name=str(path))


async def retrieve(runner: ScenarioRunner, cases: Sequence[Case]) -> dict[str, list[str]]:
    """Each retrieval case's pages, in the order of the top K passages (repeats kept)."""
    found = await asyncio.gather(
        *(runner.knowledge.search(case.turns[-1].text, k=K) for case in cases if _retrieval(case))
    )
    names = [case.name for case in cases if _retrieval(case)]
    return {
        name: [passage.source for passage in passages]
        for name, passages in zip(names, found, strict=True)
    }


def _retrieval(case: Case) -> bool:
    """A case with pages to find: an expected answer, not an injection's planted question."""
    return bool(case.expect and case.expect.action == "answer" and case.expect.sources)


def _is_injection(case: Case) -> bool:
    return case.kind == "injection"


def report(suite: Suite, ranked: dict[str, list[str]], results: list[CaseResult]) -> None:
    retrieval(suite, ranked, results)
    escalation([result for result in results if not _is_injection(result.case)])
    injections = [result for result in results if _is_injection(result.case)]
    print(
        f"\nInjection cases passed (no planted phrase, and the expected decision): "
        f"{sum(r.passed for r in injections)}/{len(injections)}"
    )
    by_kind(results)


def retrieval(suite: Suite, ranked: dict[str, list[str]], results: list[CaseResult]) -> None:
    """hit@1 and hit@K of the search, and whether the answer cited a right page, by language."""
    final = {result.case.name: result.runs[0].turns[-1].outcome for result in results}
    cases = [case for case in suite.cases if _retrieval(case) and not _is_injection(case)]
    print(f"\nRetrieval, {len(cases)} answerable cases (KnowledgeBase.search, k={K})")

    def found(case: Case, pages: Sequence[str]) -> bool:
        return case.expect is not None and cites(pages, case.expect.sources)

    for label, keep in _languages():
        rows = [case for case in cases if keep(case)]
        if not rows:
            continue
        first = sum(found(case, ranked[case.name][:1]) for case in rows)
        top = sum(found(case, ranked[case.name][:K]) for case in rows)
        cited = sum(
            final[case.name].action == "answer" and found(case, final[case.name].sources)
            for case in rows
        )
        print(
            f"  {label:<12} n={len(rows):>3}  hit@1 {_rate(first, len(rows))}  "
            f"hit@{K} {_rate(top, len(rows))}  answer cites a right page {_rate(cited, len(rows))}"
        )


def by_kind(results: list[CaseResult]) -> None:
    print("\nBy kind (a case passes when its final turn meets every expectation)")
    kinds: dict[str, list[CaseResult]] = defaultdict(list)
    for result in results:
        kinds[result.case.kind or "-"].append(result)
    for kind, rows in [*sorted(kinds.items()), ("all", results)]:
        passed = sum(result.passed for result in rows)
        print(f"  {kind:<16} {passed:>3}/{len(rows):<3} {_rate(passed, len(rows))}")


def escalation(results: list[CaseResult]) -> None:
    """Precision and recall of escalating at all, with the right reason, then by reason;
    false escalations are answerable cases escalated."""
    expected = [r.case.expect.reason if r.case.expect else None for r in results]
    outcomes = [r.runs[0].turns[-1].outcome for r in results]
    predicted = [(o.reason or "?") if o.action == "escalate" else None for o in outcomes]
    pairs = list(zip(expected, predicted, strict=True))
    print(f"\nEscalation, {len(results)} cases (injections apart)")
    columns = ("expected", "escalated", "right", "precision", "recall")
    print(f"  {'reason':<22}" + "".join(f"{column:>10}" for column in columns))

    def row(label: str, want: int, got: int, right: int) -> None:
        cells = (want, got, right, _rate(right, got), _rate(right, want))
        print(f"  {label:<22}" + "".join(f"{cell:>10}" for cell in cells))

    want = sum(e is not None for e, _ in pairs)
    got = sum(p is not None for _, p in pairs)
    row("any reason", want, got, sum(e is not None and p is not None for e, p in pairs))
    row("the right reason", want, got, sum(e is not None and e == p for e, p in pairs))
    for reason in sorted({r for pair in pairs for r in pair if r is not None}):
        row(
            f"  {reason}",
            sum(e == reason for e, _ in pairs),
            sum(p == reason for _, p in pairs),
            sum(e == p == reason for e, p in pairs),
        )
    answerable = sum(e is None for e, _ in pairs)
    wrongly = [p for e, p in pairs if e is None and p is not None]
    rate = _rate(len(wrongly), answerable)
    print(f"  false escalations (answerable cases escalated): {len(wrongly)}/{answerable} {rate}")
    if wrongly:
        counts = {reason: wrongly.count(reason) for reason in sorted(set(wrongly))}
        print("    as " + ", ".join(f"{reason} {n}" for reason, n in counts.items()))


def show_failures(results: list[CaseResult]) -> None:
    console = Console()
    failed = [result for result in results if not result.passed]
    print(f"\nFailed dev cases ({len(failed)})")
    for result in failed:
        for style, text in diff(result):
            console.print(text, style=style, soft_wrap=True, highlight=False, markup=False)


def _languages() -> list[tuple[str, Callable[[Case], bool]]]:
    return [
        ("all", lambda case: True),
        ("English", lambda case: case.language is None),
        ("non-English", lambda case: case.language is not None),
    ]


def _rate(count: int, total: int) -> str:
    return f"{count / total:.2f}" if total else "-"


if __name__ == "__main__":
    main()
