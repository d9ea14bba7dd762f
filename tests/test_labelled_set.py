"""The labelled Plausible conversations (benchmarks/data/plausible/) keep their schema and split.

Source pages are checked against the corpus by split.py --check, which can see it; these tests
read only the committed files.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from gateway.message import Reason

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "plausible"


def _split_module() -> ModuleType:
    """split.py is a script beside the data, not a package module: load it by path."""
    spec = importlib.util.spec_from_file_location("plausible_split", DATA / "split.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


split = _split_module()
DEV = split.load(DATA / "dev.yaml")
TEST = split.load(DATA / "test.yaml")
ALL = DEV + TEST
HOLDOUT = split.load(DATA / "holdout.yaml")  # a set of its own, never re-split


def test_names_are_unique_across_the_three_files() -> None:
    assert split.problems(ALL + HOLDOUT, corpus=None) == []


def test_label_reasons_are_gateway_reasons() -> None:
    assert set(get_args(split.LabelReason)) <= {reason.value for reason in Reason}


def test_every_kind_and_reason_is_in_each_split() -> None:
    for half in (DEV, TEST, HOLDOUT):
        assert {case.kind for case in half} == set(get_args(split.Kind))
        reasons = {case.expect.reason for case in half if case.expect.action == "escalate"}
        assert reasons == set(get_args(split.LabelReason))


def test_committed_files_are_the_output_of_split_py() -> None:
    dev, test = split.split(ALL)
    assert split.render("dev", dev) == (DATA / "dev.yaml").read_text(encoding="utf-8")
    assert split.render("test", test) == (DATA / "test.yaml").read_text(encoding="utf-8")


def test_each_stratum_is_halved() -> None:
    dev = Counter(case.stratum for case in DEV)
    test = Counter(case.stratum for case in TEST)
    for stratum in dev | test:
        assert abs(dev[stratum] - test[stratum]) <= 1, stratum


def test_split_does_not_depend_on_input_order() -> None:
    dev, _ = split.split(list(reversed(ALL)))
    assert {case.name for case in dev} == {case.name for case in DEV}


@pytest.mark.parametrize(
    ("cases", "least"),
    [
        (ALL, {"all": 170, "retrieval": 110, "escalations": 60, "injections": 10}),
        (HOLDOUT, {"all": 90, "retrieval": 55, "escalations": 25, "injections": 4}),
    ],
    ids=["dev+test", "holdout"],
)
def test_size_and_mix_meet_the_brief(cases: list[Any], least: dict[str, int]) -> None:
    kinds = Counter(case.kind for case in cases)
    retrieval = [c for c in cases if c.expect.action == "answer" and c.kind != "injection"]
    escalations = [c for c in cases if c.expect.action == "escalate" and c.kind != "injection"]
    foreign = [case for case in cases if case.language is not None]
    assert len(cases) >= least["all"]
    assert len(retrieval) >= least["retrieval"]
    assert len(escalations) >= least["escalations"]
    assert kinds["injection"] >= least["injections"]
    assert len(foreign) >= 0.2 * len(cases)
    assert {case.language for case in foreign} == {"de", "es", "fr"}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"expect": {"action": "escalate"}}, "needs a reason"),
        ({"expect": {"action": "answer", "sources": []}}, "has sources"),
        ({"expect": {"action": "escalate", "reason": "because"}}, "reason"),
        ({"kind": "two_turn"}, "exactly two turns"),
        ({"kind": "multilingual"}, "names its language"),
        ({"kind": "injection"}, "must not say"),
        ({"name": "Not Kebab"}, "name"),
        ({"turns": ["  "]}, "blank"),
        ({"extra": 1}, "extra"),
    ],
)
def test_schema_rejects_malformed_cases(change: dict[str, object], complaint: str) -> None:
    good = {
        "name": "ok-case",
        "kind": "plain",
        "turns": ["How do I add a site?"],
        "expect": {"action": "answer", "sources": ["add-website.md"]},
        "origin": "written",
    }
    split.Case.model_validate(good)
    with pytest.raises(ValidationError, match=complaint):
        split.Case.model_validate(good | change)
