"""Escalation judgment: every reason code, in several languages, and through the REST path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brain.config import BrainConfig, BrainMessages, EscalationConfig
from brain.escalation import EscalationJudge, upset_score, wants_human
from gateway.app.cli import app
from gateway.app.settings import GatewayConfig
from gateway.message import Action, Conversation, Decision, Reason, Role, TranscriptEntry
from tests.harness import Gateway

JUDGE = EscalationJudge(EscalationConfig(), BrainMessages())


def reason_for(text: str, history: list[TranscriptEntry] | None = None) -> Reason | None:
    decision = JUDGE.before_answer(text, history or [])
    return decision.reason if decision else None


@pytest.mark.parametrize(
    "text",
    [
        "I want to talk to a human",
        "Get me a real person please",
        "Ich möchte mit einem Mitarbeiter sprechen",
        "Quiero hablar con una persona",
        "Je voudrais parler à un conseiller",
        "Vorrei parlare con un operatore",
        "Quero falar com um atendente",
        "Ik wil met een medewerker spreken",
        "Chcę porozmawiać z konsultantem",
    ],
)
def test_a_request_for_a_person_is_recognised_in_any_of_eight_languages(text: str) -> None:
    assert wants_human(text)
    decision = JUDGE.before_answer(text, [])
    assert decision is not None and decision.reason is Reason.HUMAN_REQUESTED
    assert "asked for a person" in decision.explanation


@pytest.mark.parametrize(
    "text",
    [
        "How do I pause my subscription?",
        "Is the agent of the courier DHL?",
        "Who is the person on the bag?",
    ],
)
def test_ordinary_questions_are_not_requests_for_a_person(text: str) -> None:
    assert not wants_human(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I want my money back for order 1042", Reason.POLICY_RESTRICTED),
        ("Please refund my last delivery", Reason.POLICY_RESTRICTED),
        ("Ich möchte eine Rückerstattung für die Bestellung", Reason.POLICY_RESTRICTED),
        ("You charged me twice this month", Reason.POLICY_RESTRICTED),
        ("Me han cobrado dos veces el pedido", Reason.POLICY_RESTRICTED),
        ("Mon avocat va vous contacter", Reason.POLICY_RESTRICTED),
        ("I think my account was hacked", Reason.POLICY_RESTRICTED),
        ("Can you cancel my subscription?", Reason.ACCOUNT_ACTION),
        ("Please delete my account", Reason.ACCOUNT_ACTION),
        ("Können Sie bitte mein Abo kündigen?", Reason.ACCOUNT_ACTION),
        ("¿Puede cambiar mi dirección de envío?", Reason.ACCOUNT_ACTION),
        ("Pourriez-vous annuler ma commande ?", Reason.ACCOUNT_ACTION),
        ("Please reverse the last two payments, we had stopped using it", Reason.POLICY_RESTRICTED),
        ("I found a stored XSS on your checkout page", Reason.POLICY_RESTRICTED),
        ("I think somebody got into our account last night", Reason.POLICY_RESTRICTED),
        ("Please cancel our subscription with immediate effect", Reason.ACCOUNT_ACTION),
        ("ugh, could you just do it for me?", Reason.ACCOUNT_ACTION),
        ("Supprimez notre compte, merci", Reason.ACCOUNT_ACTION),
    ],
)
def test_reserved_topics_and_account_actions_escalate_with_their_reason(
    text: str, reason: Reason
) -> None:
    assert reason_for(text) is reason


@pytest.mark.parametrize(
    "text",
    [
        "How do I cancel my subscription?",
        "What is your refund policy for grinders?",
        "How long does a refund take?",
        "Is the agent of the courier DHL?",
        "Can I pause my subscription?",
        "How do we cancel our subscription?",
        "Can I return the grinder and get the shipping fees back?",
    ],
)
def test_how_to_questions_about_the_same_topics_are_left_to_the_answerer(text: str) -> None:
    assert reason_for(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "This is ridiculous!! I'm so frustrated with you",
        "WORST SERVICE EVER, I am furious",
        "Das ist eine Frechheit, ich bin total genervt!!",
        "Es inaceptable, estoy harta de esperar",
        "C'est scandaleux, j'en ai marre !!",
    ],
)
def test_an_angry_message_escalates_as_negative_sentiment(text: str) -> None:
    decision = JUDGE.before_answer(text, [])
    assert decision is not None and decision.reason is Reason.NEGATIVE_SENTIMENT
    assert decision.reply == BrainMessages().apology


def test_mild_annoyance_alone_does_not_escalate() -> None:
    assert upset_score("I'm a bit disappointed the beans were late.") == 1
    assert reason_for("I'm a bit disappointed the beans were late.") is None


def test_repeated_complaints_add_up_to_an_escalation() -> None:
    history = [
        TranscriptEntry(role=Role.CUSTOMER, text="My parcel still hasn't come, I'm annoyed."),
        TranscriptEntry(role=Role.BOT, text="Sorry to hear that. Tracking shows..."),
        TranscriptEntry(role=Role.CUSTOMER, text="Still waiting. Nobody has told me anything."),
        TranscriptEntry(role=Role.BOT, text="Carrier traces take up to 10 business days."),
    ]
    now = "I'm disappointed, where is it?"
    assert reason_for(now) is None
    decision = JUDGE.before_answer(now, history)
    assert decision is not None and decision.reason is Reason.NEGATIVE_SENTIMENT
    assert "2 earlier complaint(s)" in decision.explanation


def test_the_same_complaint_sent_again_counts_as_repeated() -> None:
    complaint = "Still waiting for my order."
    history = [TranscriptEntry(role=Role.CUSTOMER, text=complaint)] * 2
    decision = JUDGE.before_answer(complaint, history)
    assert decision is not None and decision.reason is Reason.NEGATIVE_SENTIMENT


def test_the_sentiment_threshold_comes_from_config() -> None:
    lenient = EscalationJudge(EscalationConfig(sentiment_threshold=10), BrainMessages())
    assert lenient.before_answer("This is ridiculous!! I'm so frustrated", []) is None


def test_the_nth_failed_turn_in_a_row_escalates_as_repeated_failure() -> None:
    failed = Decision(action=Action.ESCALATE, reason=Reason.LOW_CONFIDENCE, explanation="0.12")
    first = JUDGE.after_answer(failed, Conversation(key="rest:z", channel="rest", failed_turns=0))
    third = JUDGE.after_answer(failed, Conversation(key="rest:z", channel="rest", failed_turns=2))
    assert first.reason is Reason.LOW_CONFIDENCE
    assert third.reason is Reason.REPEATED_FAILURE
    assert third.explanation.startswith("The bot could not answer 3 turns in a row")


def test_a_request_for_a_person_is_not_counted_as_a_bot_failure() -> None:
    asked = Decision(action=Action.ESCALATE, reason=Reason.HUMAN_REQUESTED)
    conversation = Conversation(key="rest:z", channel="rest", failed_turns=5)
    assert JUDGE.after_answer(asked, conversation).reason is Reason.HUMAN_REQUESTED


# Through the whole gateway with the offline answerer: REST in, REST out.


@pytest.fixture
async def offline_gateway(sample_data_dir: Path):  # type: ignore[no-untyped-def]
    # min_confidence 1.0: every question is out of the knowledge base's reach, so each turn
    # fails; the thresholds are read from config, never assumed.
    brain = BrainConfig(
        anthropic_api_key=None,
        min_confidence=1.0,
        escalation=EscalationConfig(repeated_failures=3),
    )
    async with Gateway.open(
        GatewayConfig(data_dir=sample_data_dir, brain=brain), embedded=True
    ) as gateway:
        yield gateway


async def test_rest_answers_carry_each_reason_code(offline_gateway) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "Can I speak to a real person?": "human_requested",
        "I want a refund for my broken kettle": "policy_restricted",
        "Could you change my email address to new@example.com?": "account_action",
        "This is unacceptable!! Third time I'm asking!": "negative_sentiment",
    }
    for number, (text, reason) in enumerate(cases.items()):
        body = await offline_gateway.ask(f"c{number}", text)
        assert body["decision"]["action"] == "escalate", text
        assert body["decision"]["reason"] == reason, text
        assert body["decision"]["explanation"], text
        assert body["replies"], text


async def test_three_unanswerable_questions_in_a_row_escalate_as_repeated_failure(
    offline_gateway,
) -> None:  # type: ignore[no-untyped-def]
    reasons = []
    for text in ("What's the weather on Mars?", "Who won the 1998 cup?", "Best pizza in Rome?"):
        body = await offline_gateway.ask("drifter", text)
        reasons.append(body["decision"]["reason"])
        assert body["decision"]["sources"] is not None
    assert reasons == ["low_confidence", "low_confidence", "repeated_failure"]


async def test_a_turn_an_intent_reads_as_out_of_scope_counts_toward_repeated_failure(
    offline_gateway,
) -> None:  # type: ignore[no-untyped-def]
    """The third failed turn is decided before any answer (the unanswerable intent), and
    it still makes three in a row."""
    reasons, explanations = [], []
    for text in (
        "What's the weather on Mars?",
        "Who won the 1998 cup?",
        "Are you HIPAA compliant?",
    ):
        body = await offline_gateway.ask("compliance", text)
        reasons.append(body["decision"]["reason"])
        explanations.append(body["decision"]["explanation"])
    assert reasons == ["low_confidence", "low_confidence", "repeated_failure"]
    assert "unanswerable" in explanations[-1]


async def test_asking_for_a_person_is_not_a_failed_turn(offline_gateway) -> None:  # type: ignore[no-untyped-def]
    reasons = []
    for text in ("Can I speak to a real person?", "What's the weather on Mars?", "Best pizza?"):
        body = await offline_gateway.ask("asker", text)
        reasons.append(body["decision"]["reason"])
    assert reasons == ["human_requested", "low_confidence", "low_confidence"]


def test_gateway_ask_json_carries_the_decision_with_reason_and_sources(
    sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"data_dir: {sample_data_dir}\nbrain:\n  min_confidence: 0.0\n")
    runner = CliRunner()
    answered = runner.invoke(app, ["ask", "--json", "-c", str(config), "Can I pause my plan?"])
    assert answered.exit_code == 0, answered.output
    body = json.loads(answered.stdout)
    assert body["decision"]["action"] == "answer" and body["decision"]["reason"] is None
    assert body["decision"]["sources"] and body["decision"]["sources"][0]["source"].endswith(".md")
    escalated = runner.invoke(app, ["ask", "--json", "-c", str(config), "Please delete my account"])
    body = json.loads(escalated.stdout)
    assert body["decision"]["action"] == "escalate"
    assert body["decision"]["reason"] == "account_action"
