"""`gateway test`: the sample business's scenarios pass through the real pipeline (offline
answerer, the sample help centre in Chroma, the sample procedures calling the demo shop that
`gateway test` serves); a wrong expectation fails with a readable diff, a tool expectation
with the calls made; --junit and --json write what CI systems and scripts read; the labelled
sets are scenario files too."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml
from junitparser import Failure, JUnitXml
from typer.testing import CliRunner, Result

from gateway.app.cli import app
from gateway.app.scenarios.checks import Outcome, detect_language, mismatches, same_page
from gateway.app.scenarios.model import Case, ScenarioError, load, load_all
from gateway.message import ToolCallRecord
from tests.conftest import SAMPLE_KB

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "config" / "gateway.yaml"
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
    """The sample config (its tools, its procedures beside it, the demo shop on) over the
    sample help centre, already ingested (so not again). The answer deadline is generous:
    these tests are about decisions, on a machine that may be loaded; the deadline has tests
    and benchmarks of its own."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    sample = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    sample["data_dir"] = str(sample_data_dir)
    sample["knowledge"]["sources"] = [str(SAMPLE_KB)]
    sample["brain"]["deadline"] = 30
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(sample, allow_unicode=True), encoding="utf-8")
    (tmp_path / "procedures").symlink_to(SAMPLE_CONFIG.parent / "procedures")
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
        for name in (
            "answers.yaml",
            "escalations.yaml",
            "languages.yaml",
            "safety.yaml",
            "tools.yaml",
        )
    }
    body = json.loads(report.read_text(encoding="utf-8"))
    assert body["passed"] == body["cases"] == len(cases)
    by_name = {case["name"]: case for case in body["results"]}
    # Each conversation turn is recorded with what the customer was sent.
    skip = by_name["skip-then-when-charged"]["runs"][0]["turns"]
    assert len(skip) == 2 and all(turn["reply"] and turn["sources"] for turn in skip)
    refund = by_name["refund-for-kettle"]["runs"][0]["turns"][0]
    assert (refund["action"], refund["reason"]) == ("escalate", "policy_restricted")
    # Each turn's tool calls, as the transcript holds them: the change only on the yes.
    returned = [turn["calls"] for turn in by_name["return-only-once-confirmed"]["runs"][0]["turns"]]
    assert [[call["tool"] for call in calls] for calls in returned] == [
        [],
        ["get_order"],
        ["start_return"],
    ]
    assert returned[2][0]["arguments"] == {"order_id": "KC-1001", "postcode": "SW1A 1AA"}
    assert (returned[2][0]["outcome"], returned[2][0]["status"]) == ("ok", 201)


WRONG_CALLS = """\
cases:
  - name: looks-the-order-up
    turns: ["Where is my order KC-1002?", "SW1A 1AA"]
    expect: {calls: [{tool: get_order, with: {order_id: KC-1002, postcode: SW1A 1AA}}]}
  - name: looks-up-another-order
    turns: ["Where is my order KC-1002?", "SW1A 1AA"]
    expect: {calls: [{tool: get_order, with: {order_id: KC-1003}}, find_orders]}
  - name: must-not-return
    turns: ["I want to return order KC-1001", "SW1A 1AA", "yes"]
    every_turn: {not_calls: [start_return]}
"""


def test_a_tool_expectation_fails_naming_the_calls_made(config: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "calls.yaml"
    scenarios.write_text(WRONG_CALLS, encoding="utf-8")
    report = tmp_path / "report.json"
    result = gateway_test(scenarios, "-c", config, "--json", report)
    assert result.exit_code == 1, result.output
    output = result.output
    assert "1/3 cases passed, offline answerer" in output
    assert "FAIL looks-the-order-up" not in output
    made = 'get_order {"order_id": "KC-1002", "postcode": "SW1A 1AA"} -> ok 200'
    other = output.split("FAIL looks-up-another-order", 1)[1].split("FAIL", 1)[0]
    assert "turn 1 of 2" not in other and "turn 2 of 2: 'SW1A 1AA'" in other
    assert (
        f'- calls     get_order with {{"order_id": "KC-1003"}}\n    + calls     {made}\n' in other
    )
    assert f"- calls     find_orders\n    + calls     {made}\n" in other
    assert f"      called    {made}" in other
    # A change that was done fails `not_calls` on the turn that did it, and only there.
    returned = output.split("FAIL must-not-return", 1)[1]
    assert "turn 3 of 3: 'yes'" in returned and "turn 2 of 3" not in returned
    assert (
        "- not_calls no call to start_return\n"
        '    + not_calls start_return {"order_id": "KC-1001", "postcode": "SW1A 1AA"} -> ok 201'
    ) in returned
    body = json.loads(report.read_text(encoding="utf-8"))
    wrong = next(case for case in body["results"] if case["name"] == "must-not-return")
    [mismatch] = wrong["runs"][0]["turns"][2]["mismatches"]
    assert mismatch["check"] == "not_calls" and "start_return" in mismatch["got"]


def test_a_tool_name_with_a_typo_is_named_with_its_key_path(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "cases:\n  - name: fine\n    turns: [hi]\n    expect: {calls: [get_order]}\n"
        "  - name: typo\n    turns: [hi, {text: there, expect: {calls: [{tool: get_ordr}]}}]\n"
        "    every_turn: {not_calls: [start_return, cancel_subscription]}\n"
    )
    result = gateway_test(path, "-c", config)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "2 problem(s)" in output
    assert "cases[1] (typo).turns[1].expect.calls[0].tool: unknown tool 'get_ordr' (one of " in (
        output
    )
    assert "cases[1] (typo).every_turn.not_calls[1]: unknown tool 'cancel_subscription'" in output
    assert "change_address, find_orders" in output and "cases[0]" not in output


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
            "cases:\n  - name: a\n    turns: [hi]\n    expect: {calls: [a], not_calls: [a]}",
            "in both calls and not_calls",
        ),
        (
            "cases:\n  - name: a\n    turns: [hi]\n    expect: {calls: [{tool: a, outcome: fine}]}",
            "outcome",
        ),
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
    (tmp_path / "b.yaml").write_text(
        case.format(channel="rest").replace("same", "other").replace("action: answer", "calls: [x]")
    )
    with pytest.raises(
        ScenarioError, match=r"\(other\)\.expect\.calls\[0\]\.tool: unknown tool 'x' "
    ):
        load_all([tmp_path], channels=CHANNELS, tools=["get_order"])
    with pytest.raises(ScenarioError, match="no tools are configured"):
        load_all([tmp_path], channels=CHANNELS)


def outcome(
    reply: str,
    *,
    sources: tuple[str, ...] = (),
    text: str = "hi",
    calls: tuple[ToolCallRecord, ...] = (),
) -> Outcome:
    return Outcome(
        text=text,
        action="answer",
        reason=None,
        sources=sources,
        reply=reply,
        explanation="",
        confidence=0.5,
        latency_ms=1.0,
        calls=calls,
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


def test_a_call_matches_with_at_least_the_expected_arguments_and_its_outcome() -> None:
    order = {"order_id": "KC-1002", "postcode": "SW1A 1AA", "email": "jane@example.com"}
    looked_up = outcome(
        "…", calls=(ToolCallRecord(tool="get_order", arguments=order, outcome="ok", status=200),)
    )
    assert checked({"calls": ["get_order"]}, looked_up) == []
    assert (
        checked({"calls": [{"tool": "get_order", "with": {"order_id": "KC-1002"}}]}, looked_up)
        == []
    )
    assert (
        checked(
            {"calls": [{"tool": "get_order", "with": {"email": "jane@example.com"}}]}, looked_up
        )
        == []
    )
    assert checked(
        {"calls": [{"tool": "get_order", "with": {"order_id": "KC-1003"}}]}, looked_up
    ) == ["calls"]
    assert checked({"calls": [{"tool": "get_order", "with": {"weeks": 4}}]}, looked_up) == ["calls"]
    assert checked({"calls": [{"tool": "get_order", "outcome": "ok"}]}, looked_up) == []
    assert checked({"calls": [{"tool": "get_order", "outcome": "failed"}]}, looked_up) == ["calls"]
    assert checked({"not_calls": ["start_return"]}, looked_up) == []
    assert checked({"not_calls": ["get_order"]}, looked_up) == ["not_calls"]
    assert checked({"calls": ["get_order"]}, outcome("…")) == ["calls"]


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
    """dev.yaml, test.yaml and holdout.yaml run under `gateway test` as they are (parsed,
    never printed)."""
    for split in ("dev", "test", "holdout"):
        suite = load(LABELLED / f"{split}.yaml")
        assert len(suite.cases) >= 90
        assert all(case.expect is not None and case.expect.action for case in suite.cases)
