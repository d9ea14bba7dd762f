"""What a scenario run reports: a table on the terminal, a readable diff per failed case
(expected `-`, got `+`), JSON, and JUnit XML for CI systems (written with junitparser)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from junitparser import Error, Failure, JUnitXml, TestCase, TestSuite
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway.app.scenarios.checks import describe_call, excerpt
from gateway.app.scenarios.runner import CaseResult, CheckedTurn, Run

Line = tuple[str, str]  # (style, text)


def diff(result: CaseResult) -> list[Line]:
    """The failed run of a case, turn by turn: each check's expected (`-`) and got (`+`),
    with the reply and what the gateway said about its decision."""
    run = result.last
    repeat = len(result.runs)
    failed_run = result.runs.index(run) + 1
    of_runs = f", run {failed_run} of {repeat} ({result.runs_passed}/{repeat} passed)"
    lines: list[Line] = [
        ("bold red", f"FAIL {result.case.name}  {result.path}{of_runs if repeat > 1 else ''}")
    ]
    for number, turn in enumerate(run.turns, 1):
        if turn.mismatches:
            lines += _turn_diff(number, len(result.case.turns), turn)
    if run.error is not None:
        lines.append(("red", f"  error: {run.error}"))
    return lines


def _turn_diff(number: int, turns: int, turn: CheckedTurn) -> Iterator[Line]:
    outcome = turn.outcome
    yield "", f"  turn {number} of {turns}: {excerpt(outcome.text)!r}"
    for mismatch in turn.mismatches:
        yield "red", f"    - {mismatch.check:<9} {mismatch.expected}"
        yield "green", f"    + {mismatch.check:<9} {mismatch.got}"
    decision = outcome.action + (f" ({outcome.reason})" if outcome.reason else "")
    yield "dim", f"      decision  {decision}, confidence {outcome.confidence:.2f}"
    if outcome.explanation:
        yield "dim", f"      why       {excerpt(outcome.explanation)}"
    yield "dim", f"      reply     {excerpt(outcome.reply) or '(none)'}"
    for call in outcome.calls:
        yield "dim", f"      called    {describe_call(call)}"


def print_report(
    console: Console, results: Sequence[CaseResult], *, answerer: str, repeat: int
) -> None:
    """A table per scenario file, then each failed case's diff, then the count."""
    by_file: dict[Path, list[CaseResult]] = {}
    for result in results:
        by_file.setdefault(result.path, []).append(result)
    for path, rows in by_file.items():
        table = Table("case", "turns", "passed", "result", "seconds", title=str(path))
        for result in rows:
            verdict = (
                Text("pass", style="green") if result.passed else Text("FAIL", style="bold red")
            )
            table.add_row(
                Text(result.case.name),
                str(len(result.case.turns)),
                f"{result.runs_passed}/{len(result.runs)}",
                verdict,
                f"{result.seconds:.2f}",
            )
        console.print(table)
    for result in results:
        if not result.passed:
            for style, text in diff(result):  # long lines stay whole, as in a CI log
                console.print(Text(text, style=style), soft_wrap=True)
    console.print(summary_line(results, answerer=answerer, repeat=repeat))


def summary_line(results: Sequence[CaseResult], *, answerer: str, repeat: int) -> str:
    passed = sum(result.passed for result in results)
    label = f"pass^{repeat}" if repeat > 1 else "passed"
    line = f"{passed}/{len(results)} cases {label}, {answerer} answerer"
    if repeat > 1:
        runs = sum(result.runs_passed for result in results)
        line += f"; {runs}/{len(results) * repeat} runs passed"
    return line


def as_json(results: Sequence[CaseResult], *, answerer: str, repeat: int) -> dict[str, Any]:
    return {
        "answerer": answerer,
        "repeat": repeat,
        "cases": len(results),
        "passed": sum(result.passed for result in results),
        "results": [_case_json(result) for result in results],
    }


def _case_json(result: CaseResult) -> dict[str, Any]:
    case = result.case
    return {
        "name": case.name,
        "file": str(result.path),
        "kind": case.kind,
        "language": case.language,
        "passed": result.passed,
        "runs_passed": result.runs_passed,
        "runs": [_run_json(run) for run in result.runs],
    }


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "passed": run.passed,
        "error": run.error,
        "turns": [
            {
                "text": turn.outcome.text,
                "action": turn.outcome.action,
                "reason": turn.outcome.reason,
                "sources": list(turn.outcome.sources),
                "reply": turn.outcome.reply,
                "confidence": turn.outcome.confidence,
                "latency_ms": turn.outcome.latency_ms,
                "calls": [call.model_dump(mode="json") for call in turn.outcome.calls],
                "mismatches": [
                    {"check": m.check, "expected": m.expected, "got": m.got}
                    for m in turn.mismatches
                ],
            }
            for turn in run.turns
        ],
    }


def write_json(path: Path, results: Sequence[CaseResult], *, answerer: str, repeat: int) -> None:
    body = as_json(results, answerer=answerer, repeat=repeat)
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_junit(path: Path, results: Sequence[CaseResult]) -> None:
    """One test suite per scenario file, one test case per scenario; a failed one carries
    the diff."""
    suites: dict[Path, TestSuite] = {}
    for result in results:
        suite = suites.get(result.path)
        if suite is None:
            suite = suites[result.path] = TestSuite(str(result.path))
        case = TestCase(result.case.name, classname=result.path.stem, time=result.seconds)
        if not result.passed:
            text = "\n".join(line for _, line in diff(result))
            run = result.last
            outcome: Failure | Error
            if run.error is not None:
                outcome = Error(run.error, "error")
            else:
                checks = dict.fromkeys(m.check for turn in run.turns for m in turn.mismatches)
                outcome = Failure(f"{', '.join(checks)} not as expected", "mismatch")
            outcome.text = text
            case.result = [outcome]
        suite.add_testcase(case)
    document = JUnitXml("gateway test")
    for suite in suites.values():
        document.add_testsuite(suite)
    document.update_statistics()  # type: ignore[no-untyped-call]  # totals on <testsuites>
    document.write(str(path), pretty=True)
