"""Each turn's outcome against its expectation: one function per kind of check, listed in
`CHECKS`; each says what was expected and what the gateway did instead."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.app.scenarios.model import Case, Expect, ExpectedCall, regex_of
from gateway.message import ToolCallRecord

EXCERPT = 240  # characters of a reply shown in a mismatch


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the gateway did with one customer turn."""

    text: str  # the customer's turn
    action: str  # answer, escalate or human
    reason: str | None
    sources: tuple[str, ...]  # the pages the reply cites
    reply: str  # what the customer was sent, all parts
    explanation: str
    confidence: float
    latency_ms: float
    calls: tuple[ToolCallRecord, ...] = ()  # the tools called for this turn, in order


@dataclass(frozen=True, slots=True)
class Mismatch:
    check: str  # action, sources, says, not_says, language, calls, not_calls
    expected: str
    got: str


def check_action(expect: Expect, outcome: Outcome, case: Case) -> list[Mismatch]:
    if expect.action is None:
        return []
    wanted = _decision(expect.action, expect.reason)
    got = _decision(outcome.action, outcome.reason)
    same = outcome.action == expect.action and (
        expect.reason is None or outcome.reason == expect.reason
    )
    return [] if same else [Mismatch("action", wanted, got)]


def check_sources(expect: Expect, outcome: Outcome, case: Case) -> list[Mismatch]:
    if not expect.sources or cites(outcome.sources, expect.sources):
        return []
    return [
        Mismatch(
            "sources",
            "one of " + ", ".join(expect.sources),
            ", ".join(outcome.sources) or "no source",
        )
    ]


def check_says(expect: Expect, outcome: Outcome, case: Case) -> list[Mismatch]:
    return [
        Mismatch("says", pattern, "not in the reply" if outcome.reply else "no reply")
        for pattern in expect.says
        if find(pattern, outcome.reply) is None
    ]


def check_not_says(expect: Expect, outcome: Outcome, case: Case) -> list[Mismatch]:
    found = ((pattern, find(pattern, outcome.reply)) for pattern in expect.not_says)
    return [
        Mismatch("not_says", f"not {pattern}", excerpt(outcome.reply, around=match))
        for pattern, match in found
        if match is not None
    ]


def check_language(expect: Expect, outcome: Outcome, case: Case) -> list[Mismatch]:
    if expect.language is None:
        return []
    wanted = expect.language
    if wanted == "customer":
        wanted = case.language or detect_language(outcome.text)
    if not outcome.reply.strip():
        return [Mismatch("language", wanted, "no reply")]
    got = detect_language(outcome.reply)
    return (
        [] if got == wanted else [Mismatch("language", wanted, f"{got}: {excerpt(outcome.reply)}")]
    )


def check_calls(expect: Expect, outcome: Outcome, case: Case) -> list[Mismatch]:
    return [
        Mismatch("calls", describe_expected(wanted), describe_calls(outcome.calls))
        for wanted in expect.calls
        if not any(made(wanted, call) for call in outcome.calls)
    ]


def check_not_calls(expect: Expect, outcome: Outcome, case: Case) -> list[Mismatch]:
    return [
        Mismatch(
            "not_calls",
            f"no call to {tool}",
            describe_calls([call for call in outcome.calls if call.tool == tool]),
        )
        for tool in expect.not_calls
        if any(call.tool == tool for call in outcome.calls)
    ]


Check = Callable[[Expect, Outcome, Case], list[Mismatch]]
# In the order a reader compares: the decision, then what the reply cites and says, then
# what the gateway did on the business's API.
CHECKS: tuple[Check, ...] = (
    check_action,
    check_sources,
    check_says,
    check_not_says,
    check_language,
    check_calls,
    check_not_calls,
)


def mismatches(expects: Sequence[Expect], outcome: Outcome, case: Case) -> list[Mismatch]:
    return [
        mismatch
        for expect in expects
        for check in CHECKS
        for mismatch in check(expect, outcome, case)
    ]


def made(wanted: ExpectedCall, call: ToolCallRecord) -> bool:
    """Whether `call` is the expected one: the same tool, every expected argument equal, and
    the expected outcome (when one is given)."""
    return (
        call.tool == wanted.tool
        and all(
            name in call.arguments and call.arguments[name] == value
            for name, value in wanted.arguments.items()
        )
        and (wanted.outcome is None or call.outcome == wanted.outcome)
    )


def describe_expected(wanted: ExpectedCall) -> str:
    arguments = f" with {_arguments(wanted.arguments)}" if wanted.arguments else ""
    outcome = f" -> {wanted.outcome}" if wanted.outcome else ""
    return f"{wanted.tool}{arguments}{outcome}"


def describe_calls(calls: Sequence[ToolCallRecord]) -> str:
    """The calls on one line, as the transcript writes them: `tool {arguments} -> outcome`."""
    return "; ".join(map(describe_call, calls)) or "no tool called"


def describe_call(call: ToolCallRecord) -> str:
    status = f" {call.status}" if call.status is not None else ""
    return f"{call.tool} {_arguments(call.arguments)} -> {call.outcome}{status}"


def _arguments(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False, sort_keys=True)


def same_page(expected: str, cited: str) -> bool:
    """Whether a cited source is the expected page: the same path, or one ends with the other
    at a folder boundary. A folder's pages are cited by their path inside the folder ingested
    (`proxy/guides/cloudflare.md`), a crawled page by its URL; either can be expected by its
    full path or by its trailing part."""
    expected, cited = _normal(expected), _normal(cited)
    return expected == cited or cited.endswith("/" + expected) or expected.endswith("/" + cited)


def cites(cited: Sequence[str], expected: Sequence[str]) -> bool:
    return any(same_page(want, got) for want in expected for got in cited)


def find(pattern: str, reply: str) -> tuple[int, int] | None:
    """Where `pattern` (a substring, ignoring case, or a `/regex/`) is in `reply`, if it is."""
    regex = regex_of(pattern)
    if regex is None:
        start = reply.casefold().find(pattern.casefold())
        return None if start < 0 else (start, start + len(pattern))
    match = re.search(regex[0], reply, regex[1])
    return None if match is None else match.span()


def excerpt(reply: str, *, around: tuple[int, int] | None = None) -> str:
    """The reply on one line, cut to `EXCERPT` characters (centred on `around`, when given)."""
    start = 0 if around is None else max(0, around[0] - EXCERPT // 3)
    text = reply[start:]
    flat = " ".join(text.split())
    cut = flat[:EXCERPT] + ("…" if len(flat) > EXCERPT else "")
    return ("…" if start else "") + cut


def detect_language(text: str) -> str:
    """The ISO 639-1 code of the language `text` is written in (py3langid's model ships in its
    package, and loads on the first call)."""
    import py3langid

    language, _ = py3langid.classify(text)
    return str(language)


def _decision(action: str, reason: str | None) -> str:
    return f"{action} ({reason})" if reason else action


def _normal(source: str) -> str:
    return source.strip().removeprefix("./").rstrip("/")
