"""`gateway test`: the sample business's scenarios pass through the real pipeline (offline
answerer, the sample help centre in Chroma); a wrong expectation fails with a readable diff;
--junit and --json write what CI systems and scripts read; the labelled sets are scenario
files too."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml
from typer.testing import CliRunner, Result

from gateway.app.cli import app
from gateway.app.scenarios.checks import Outcome, detect_language, mismatches, same_page
from gateway.app.scenarios.model import Case, ScenarioError, load, load_all
from tests.conftest import SAMPLE_KB

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_TESTS = ROOT / "config" / "tests"
LABELLED = ROOT / "benchmarks" / "data" / "plausible"
CHANNELS = ["rest", "sms", "email", "webchat"]

WRONG = """\
cases:
  - name: price-is-not-an-escalation
    turns: ["How much is the Duo plan in the UK?"]
    expect:
      action: escalate
      reason: human_requested
      sources: [returns-and-refunds-policy.md]
      says: ["/€\\\\s?99/"]
  - name: off-topic-every-time
    turns: ["what's the cheapest car insurance for a new driver?"]
    expect: {action: escalate, reason: low_confidence}
  - name: wrong-on-the-first-turn
    turns: ["what's the cheapest car insurance for a new driver?", "How much is the Duo plan?"]
    every_turn: {not_says: ["help centre"]}
"""


@pytest.fixture
def config(sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The operator's config: the sample help centre, already ingested (so not again). The
    answer deadline is generous: these tests are about decisions, on a machine that may be
    loaded; the deadline has tests and benchmarks of its own."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"data_dir: {sample_data_dir}\nknowledge:\n  sources: [{SAMPLE_KB}]\n"
        "brain:\n  deadline: 30\n"
    )
    return path


def gateway_test(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["test", *map(str, args)])


def test_the_sample_business_scenarios_pass(config: Path, tmp_path: Path) -> None:
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    result = gateway_test(SAMPLE_TESTS, "-c", config, "--junit", junit, "--json", report)
    assert result.exit_code == 0, result.output
    cases = [case for path in sorted(SAMPLE_TESTS.glob("*.yaml")) for case in load(path).cases]
    assert f"{len(cases)}/{len(cases)} cases passed, offline answerer" in result.output

    document = JUnitXml.fromfile(str(junit))
    assert (document.tests, document.failures, document.errors) == (len(cases), 0, 0)
    assert {suite.name for suite in document} == {
        str(SAMPLE_TESTS / name)
        for name in ("answers.yaml", "escalations.yaml", "languages.yaml", "safety.yaml")
    }
    body = json.loads(report.read_text(encoding="utf-8"))
    assert body["passed"] == body["cases"] == len(cases)
    by_name = {case["name"]: case for case in body["results"]}
    # Each conversation turn is recorded with what the customer was sent.
    skip = by_name["skip-then-when-charged"]["runs"][0]["turns"]
    assert len(skip) == 2 and all(turn["reply"] and turn["sources"] for turn in skip)
    refund = by_name["refund-for-kettle"]["runs"][0]["turns"][0]
    assert (refund["action"], refund["reason"]) == ("escalate", "policy_restricted")


def test_a_wrong_expectation_fails_with_a_readable_diff(config: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "wrong.yaml"
    scenarios.write_text(WRONG, encoding="utf-8")
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    result = gateway_test(
        scenarios, "-c", config, "--repeat", "3", "--junit", junit, "--json", report
    )
    assert result.exit_code == 1, result.output
    output = result.output
    assert f"FAIL price-is-not-an-escalation  {scenarios}, run 1 of 3 (0/3 passed)" in output
    assert "turn 1 of 1: 'How much is the Duo plan in the UK?'" in output
    assert "- action    escalate (human_requested)\n" in output
    assert "+ action    answer\n" in output
    assert "- sources   one of returns-and-refunds-policy.md\n" in output
    assert "+ sources   subscription-plans-and-pricing.md" in output
    assert "- says      /€\\s?99/\n    + says      not in the reply" in output
    assert "      reply     " in output and "Duo" in output.split("reply     ", 1)[1]
    # Each run is a conversation of its own: the third off-topic question is not taken for
    # the third failure in a row (repeated_failure), so that case passes all three runs.
    assert "1/3 cases pass^3, offline answerer; 3/9 runs passed" in output
    # `every_turn` is checked on each turn: here the first one fails it.
    first = output.split("FAIL wrong-on-the-first-turn", 1)[1]
    assert 'turn 1 of 2: "what\'s the cheapest car insurance for a new driver?"' in first
    assert "- not_says  not help centre\n    + not_says  " in first
    assert "turn 2 of 2" not in first

    document = JUnitXml.fromfile(str(junit))
    assert (document.tests, document.failures, document.errors) == (3, 2, 0)
    cases = {case.name: case for suite in document for case in suite}
    failure = cases["price-is-not-an-escalation"].result[0]
    assert isinstance(failure, Failure)
    assert failure.message == "action, sources, says not as expected"
    assert "+ action    answer" in (failure.text or "")
    assert cases["off-topic-every-time"].is_passed
    root = ElementTree.parse(junit).getroot()  # plain XML too, as any CI parser reads it
    assert root.tag == "testsuites" and root.get("failures") == "2"

    body = json.loads(report.read_text(encoding="utf-8"))
    wrong = next(case for case in body["results"] if case["name"] == "price-is-not-an-escalation")
    assert wrong["runs_passed"] == 0 and len(wrong["runs"]) == 3
    assert {m["check"] for m in wrong["runs"][0]["turns"][0]["mismatches"]} == {
        "action",
        "sources",
        "says",
    }


def test_a_malformed_scenario_file_is_named_with_its_key_path(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "cases:\n  - name: typo\n    turns: [hi]\n    expect: {action: answer, sorces: [a.md]}\n"
    )
    result = gateway_test(path, "-c", config)
    assert result.exit_code == 2
    assert "cases[0] (typo).expect.sorces: Extra inputs are not permitted" in result.output


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("cases: []", "at least 1"),
        ("cases:\n  - name: a\n    turns: [hi]", "nothing to check"),
        (
            "cases:\n  - name: a\n    turns: [hi]\n    expect: {reason: human_requested}",
            "a reason goes with",
        ),
        (
            "cases:\n  - name: a\n    turns: [hi]\n    expect: {action: escalate, reason: sad}",
            "reason",
        ),
        (
            "cases:\n  - name: a\n    turns: [hi]\n    expect: {says: ['/(unclosed/']}",
            "not a valid regular",
        ),
        ("cases:\n  - name: a\n    turns: ['  ']\n    expect: {action: answer}", "blank"),
        (
            "cases:\n  - name: a\n    turns: [{text: hi, expect: {action: answer}}]\n"
            "    expect: {action: answer}",
            "keep one",
        ),
    ],
)
def test_the_schema_rejects_malformed_cases(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=complaint):
        load(path)


def test_names_are_unique_and_channels_known_across_files(tmp_path: Path) -> None:
    case = (
        "cases:\n  - name: same\n    channel: {channel}\n    turns: [hi]\n"
        "    expect: {{action: answer}}\n"
    )
    (tmp_path / "a.yaml").write_text(case.format(channel="rest"))
    (tmp_path / "b.yaml").write_text(case.format(channel="rest"))
    with pytest.raises(ScenarioError, match="also in"):
        load_all([tmp_path], channels=CHANNELS)
    (tmp_path / "b.yaml").write_text(case.format(channel="fax").replace("same", "other"))
    with pytest.raises(ScenarioError, match="unknown channel fax"):
        load_all([tmp_path], channels=CHANNELS)


def outcome(reply: str, *, sources: tuple[str, ...] = (), text: str = "hi") -> Outcome:
    return Outcome(
        text=text,
        action="answer",
        reason=None,
        sources=sources,
        reply=reply,
        explanation="",
        confidence=0.5,
        latency_ms=1.0,
    )


def case(expect: dict[str, object], **fields: object) -> Case:
    return Case.model_validate({"name": "c", "turns": ["hi"], "expect": expect, **fields})


def checked(expect: dict[str, object], result: Outcome, **fields: object) -> list[str]:
    scenario = case(expect, **fields)
    return [m.check for m in mismatches(scenario.expectations()[-1], result, scenario)]


def test_says_and_not_says_match_substrings_ignoring_case_and_slashed_regexes() -> None:
    reply = outcome("Standard delivery to Germany takes 3-5 business days.")
    assert checked({"says": ["GERMANY", "/\\d-\\d business days/"]}, reply) == []
    assert checked({"says": ["/germany/"]}, reply) == ["says"]  # a regex is case-sensitive
    assert checked({"says": ["/germany/i"]}, reply) == []
    assert checked({"not_says": ["free forever", "/next box/i"]}, reply) == []
    assert checked({"not_says": ["business DAYS"]}, reply) == ["not_says"]


def test_a_cited_source_matches_by_its_path_inside_the_ingested_folder() -> None:
    assert same_page("proxy/guides/cloudflare.md", "proxy/guides/cloudflare.md")
    assert same_page("cloudflare.md", "proxy/guides/cloudflare.md")
    assert same_page("plausible-docs/proxy/guides/cloudflare.md", "proxy/guides/cloudflare.md")
    assert same_page("docs/billing", "https://help.example.com/docs/billing/")
    assert not same_page("flare.md", "proxy/guides/cloudflare.md")
    assert not same_page("guides/cloudflare.md", "proxy/guides/netlify.md")
    cited = outcome("…", sources=("proxy/guides/cloudflare.md", "excluding-pages.md"))
    assert checked({"sources": ["proxy/guides/netlify.md", "excluding-pages.md"]}, cited) == []
    assert checked({"sources": ["proxy/guides/netlify.md"]}, cited) == ["sources"]


def test_the_reply_language_is_checked_against_a_code_or_the_customers_own() -> None:
    german = outcome(
        "Sie können Ihr Abonnement bis zu drei Monate pausieren.", text="Wie pausiere ich mein Abo?"
    )
    english = outcome(
        "You can pause your subscription for up to three months.", text="Wie pausiere ich mein Abo?"
    )
    assert detect_language(german.reply) == "de"
    assert checked({"language": "de"}, german) == []
    assert checked({"language": "customer"}, german) == []
    assert checked({"language": "customer"}, english) == ["language"]
    # The case's own language wins over detection from a short turn.
    assert checked({"language": "customer"}, english, language="en") == []


def test_the_labelled_sets_parse_as_scenario_files() -> None:
    """dev.yaml and test.yaml run under `gateway test` as they are (parsed, never printed)."""
    for split in ("dev", "test"):
        suite = load(LABELLED / f"{split}.yaml")
        assert len(suite.cases) >= 100
        assert all(case.expect is not None and case.expect.action for case in suite.cases)
