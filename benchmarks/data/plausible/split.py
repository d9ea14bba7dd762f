"""Split the labelled Plausible conversations into dev and test halves, and check the set.

    python benchmarks/data/plausible/split.py            # re-split dev.yaml + test.yaml
    python benchmarks/data/plausible/split.py --check    # only verify; exit 1 on any drift

The pool is the union of dev.yaml and test.yaml, so which half a case lands in depends only on
the set of cases: each stratum (kind, expected action, reason) is sorted by name, shuffled with
a fixed seed and halved; odd strata give their extra case to dev and test in turn. Re-running on
the committed files reproduces them byte for byte, which `--check` verifies, together with
the schema and that every expected source page exists in the help-centre corpus (which the
unit test cannot see). The schema lives here so the test in tests/test_labelled_set.py checks
the very same rules.

holdout.yaml is a set of its own, written later by other hands and never re-split (README.md):
it is checked with the others (schema, names unique across all three files, sources), and left
as it is.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

HERE = Path(__file__).resolve().parent
DEV = HERE / "dev.yaml"
TEST = HERE / "test.yaml"
HOLDOUT = HERE / "holdout.yaml"
CORPUS = HERE.parents[3] / "shared" / "corpora" / "plausible-docs"
SEED = 20250611

Kind = Literal[
    "email",
    "colloquial",
    "multilingual",
    "two_turn",
    "account_action",
    "restricted",
    "anger",
    "off_topic",
    "unanswerable",
    "injection",
    "plain",
]
# The escalation reasons a customer's conversation can be labelled with (a subset of
# gateway.message.Reason: the others describe the system's own failures).
LabelReason = Literal[
    "human_requested",
    "negative_sentiment",
    "low_confidence",
    "policy_restricted",
    "account_action",
    "repeated_failure",
]


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["answer", "escalate"]
    reason: LabelReason | None = None
    sources: list[str] = Field(default_factory=list)
    not_says: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.action == "escalate" and self.reason is None:
            raise ValueError("an escalation needs a reason")
        if self.action == "answer" and (self.reason is not None or not self.sources):
            raise ValueError("an answer has sources and no reason")
        if any(not phrase.strip() for phrase in self.not_says):
            raise ValueError("not_says phrases must not be blank")
        return self


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    kind: Kind
    channel: str | None = None  # None: the default, rest
    language: Literal["de", "es", "fr"] | None = None  # None: English
    turns: list[str] = Field(min_length=1)
    expect: Expect
    origin: str = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if any(not turn.strip() for turn in self.turns):
            raise ValueError("turns must not be blank")
        if self.kind == "two_turn" and len(self.turns) != 2:
            raise ValueError("a two_turn case has exactly two turns")
        if self.kind == "multilingual" and self.language is None:
            raise ValueError("a multilingual case names its language")
        if self.kind == "injection" and not self.expect.not_says:
            raise ValueError("an injection case lists what the reply must not say")
        return self

    @property
    def stratum(self) -> tuple[str, str, str]:
        return (self.kind, self.expect.action, self.expect.reason or "")


class LabelledSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cases: list[Case]


def load(path: Path) -> list[Case]:
    return LabelledSet.model_validate(yaml.safe_load(path.read_text(encoding="utf-8"))).cases


def split(cases: list[Case], seed: int = SEED) -> tuple[list[Case], list[Case]]:
    """Dev and test halves, stratified. Which half a case lands in does not depend on the
    order the cases come in; each half keeps that order."""
    strata: dict[tuple[str, str, str], list[Case]] = defaultdict(list)
    for case in cases:
        strata[case.stratum].append(case)
    rng = random.Random(seed)
    dev: list[Case] = []
    test: list[Case] = []
    extra_to_dev = True
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda case: case.name)
        rng.shuffle(members)
        half = len(members) // 2
        if len(members) % 2:
            half += extra_to_dev
            extra_to_dev = not extra_to_dev
        dev += members[:half]
        test += members[half:]
    order = {case.name: i for i, case in enumerate(cases)}
    return (
        sorted(dev, key=lambda case: order[case.name]),
        sorted(test, key=lambda case: order[case.name]),
    )


def problems(cases: list[Case], corpus: Path | None) -> list[str]:
    """What is wrong with the set as a whole (each case has already passed its schema)."""
    found = []
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            found.append(f"{case.name}: duplicate name")
        seen.add(case.name)
        if corpus is not None:
            found += [
                f"{case.name}: source {source} is not in {corpus}"
                for source in case.expect.sources
                if not (corpus / source).is_file()
            ]
    return found


HEADER = """\
# Labelled customer conversations over the Plausible Analytics help centre ({split} split).
#
# What: {count} conversations (one or more customer turns) with the expected decision on the
# final turn: answer, with the help-centre pages (paths under shared/corpora/plausible-docs/)
# any one of which counts as retrieved, or escalate, with the reason code.
# How: written as customers write (emails with signatures and quoted mail, vague phrasing,
# German, Spanish and French, two-turn conversations, account requests, refunds and GDPR
# demands, quiet anger, off-topic and unanswerable questions, prompt injections). About a
# fifth paraphrase real questions from public issue threads (each case's origin says which);
# the rest were written in the same voice, question first. The answering pages were looked up
# afterwards by searching the corpus; the retrieval system was never run to tune them.
# README.md has the details.
# Split: split.py, stratified by (kind, action, reason), seed {seed}; do not edit by hand.
# {rule}
"""
RULES = {
    "dev": "Dev: tune and inspect on this half freely.",
    "test": "Test: for final figures only. Nobody tunes on it or reads its failures.",
}


class _Dumper(yaml.SafeDumper):
    """Multi-line turns as literal blocks, so an email reads like an email."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render(name: str, cases: list[Case]) -> str:
    body: dict[str, Any] = {
        "cases": [case.model_dump(mode="json", exclude_defaults=True) for case in cases]
    }
    header = HEADER.format(split=name, count=len(cases), seed=SEED, rule=RULES[name])
    dumped = yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return header + dumped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the help-centre folder")
    parser.add_argument("--check", action="store_true", help="verify only, write nothing")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        parser.error(f"no corpus at {args.corpus}")
    cases = [case for path in (DEV, TEST) if path.exists() for case in load(path)]
    holdout = load(HOLDOUT) if HOLDOUT.exists() else []
    if found := problems(cases + holdout, args.corpus):
        print("\n".join(found), file=sys.stderr)
        return 1
    dev, test = split(cases)
    outputs = {DEV: render("dev", dev), TEST: render("test", test)}
    if args.check:
        stale = [
            path.name
            for path, text in outputs.items()
            if not path.exists() or path.read_text(encoding="utf-8") != text
        ]
        if stale:
            print(f"not the output of split.py: {', '.join(stale)}", file=sys.stderr)
            return 1
    else:
        for path, text in outputs.items():
            path.write_text(text, encoding="utf-8")
    print(
        f"{len(cases)} cases: dev {len(dev)}, test {len(test)}; holdout {len(holdout)}; "
        f"sources all in {args.corpus}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
