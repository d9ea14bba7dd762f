"""The operator's policy: disallowed claims never reach a customer, whoever wrote the text."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from brain.config import BrainConfig, BrainMessages, PolicyConfig, PolicyRule
from brain.policy import PolicyGuard
from brain.prompt import CANARY, PROMPT_SENTENCES
from gateway.app.settings import GatewayConfig
from tests.harness import Gateway

GUARD = PolicyGuard(PolicyConfig())


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Use code SAVE20 at checkout for a discount.", "coupon_code"),
        ("Here's a voucher: WELCOME10", "coupon_code"),
        ("I'll give you a 15% off discount on your next order.", "discount_offer"),
        ("We will refund your order today.", "refund_promise"),
        ("Your refund has been approved.", "refund_promise"),
        ("Good news, your return is approved.", "approval"),
        ("I have approved the exception.", "approval"),
        ("Yes, I'm a real person from the support team.", "claims_human"),
        ("I am a human agent.", "claims_human"),
        ("Ja, ich bin ein Mensch.", "claims_human"),
        ("Sí, soy una persona real.", "claims_human"),
        ("You should sue the courier for this.", "legal_advice"),
        (f"My reference is {CANARY}.", "system_prompt_leak"),
        (PROMPT_SENTENCES[3].upper(), "system_prompt_leak"),
    ],
)
def test_a_disallowed_claim_is_caught_by_its_rule(text: str, rule: str) -> None:
    violation = GUARD.check(text)
    assert violation is not None and violation.rule == rule


@pytest.mark.parametrize(
    "text",
    [
        "Your friend gets 20% off their first subscription delivery.",
        "Enter the code in the Promo code field at checkout.",
        "Refunds are issued only by our human support team.",
        "I'm an automated assistant, not a person, but I can pass this to the team.",
        "Unused equipment can be returned within 30 days of delivery for a refund.",
        "Once approved, future orders from that account are not charged sales tax.",
        "If the claim is approved, we email a prepaid shipping label.",
        "Scan the QR code with your authenticator app and enter the 6-digit code.",
    ],
)
def test_help_centre_facts_pass_the_policy(text: str) -> None:
    assert GUARD.check(text) is None


def test_every_holding_message_passes_the_policy() -> None:
    messages = BrainMessages()
    for text in (messages.holding, messages.handover, messages.apology, messages.no_agents):
        assert GUARD.check(text) is None, text


async def test_an_offline_answer_that_breaks_an_operator_rule_is_not_sent(
    tmp_path: Path,
) -> None:
    # The operator forbids quoting prices in chat: even a knowledge-base answer must obey.
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "pricing.md").write_text(
        "# Pricing\n\nThe Duo plan costs £27 per delivery.\n"
    )
    rule = PolicyRule(name="no_prices", pattern=r"[$£€]\s?\d+", why="prices only on the site")
    brain = BrainConfig(
        anthropic_api_key=None, min_confidence=0.0, policy=PolicyConfig(rules=[rule])
    )
    config = GatewayConfig(data_dir=tmp_path / "data", brain=brain)
    async with Gateway.open(config, embedded=True) as gateway:
        gateway.runtime.knowledge.ingest([tmp_path / "kb"])
        with capture_logs() as logs:
            body = await gateway.ask("pat", "How much is the Duo plan per delivery?")
        transcript = await gateway.runtime.store.transcript("rest:pat")
    assert body["decision"]["action"] == "escalate", body
    assert body["decision"]["reason"] == "policy_restricted"
    assert "no_prices" in body["decision"]["explanation"]
    said = " ".join(reply["text"] for reply in body["replies"])
    assert said.startswith(brain.messages.holding)
    assert not any(char in said for char in "$£€")
    assert not any("£" in entry.text for entry in transcript)
    blocked = [log for log in logs if log["event"] == "pipeline.policy_blocked"]
    assert blocked and blocked[0]["rule"] == "no_prices"


NONPROFIT_PAGE = (
    "# Nonprofit pricing\n\n"
    "We offer a 15% discount to registered charities and schools on yearly plans. "
    "Write to us from your organisation's address to apply.\n"
)


@pytest.mark.parametrize(
    "text",
    [
        "We offer a 15% discount to registered charities and schools on yearly plans.",
        "we  offer a **15% discount** to registered\ncharities",  # spacing, case, emphasis
    ],
)
def test_an_offer_the_knowledge_base_makes_word_for_word_may_be_quoted(text: str) -> None:
    assert GUARD.check(text) is not None  # said on its own, it is an offer the bot made up
    assert GUARD.check(text, quotes=[NONPROFIT_PAGE]) is None


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # Another figure, or the page's offer made to this customer: not what the page says.
        ("We offer a 50% discount to registered charities.", "discount_offer"),
        ("I can give you a 15% discount today.", "discount_offer"),
        ("We will refund your order today.", "refund_promise"),
        # Rules without `unless_quoted` hold whatever the passages say.
        ("I am a human agent.", "claims_human"),
    ],
)
def test_a_claim_the_passages_do_not_make_is_still_caught(text: str, rule: str) -> None:
    violation = GUARD.check(text, quotes=[NONPROFIT_PAGE, "Ask for Kim: I am a human agent."])
    assert violation is not None and violation.rule == rule


async def test_an_offline_answer_quoting_the_businesss_documented_offer_is_sent(
    tmp_path: Path,
) -> None:
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "nonprofit-pricing.md").write_text(NONPROFIT_PAGE)
    brain = BrainConfig(anthropic_api_key=None, min_confidence=0.0)
    config = GatewayConfig(data_dir=tmp_path / "data", brain=brain)
    async with Gateway.open(config, embedded=True) as gateway:
        gateway.runtime.knowledge.ingest([tmp_path / "kb"])
        body = await gateway.ask("sam", "we're a small charity, do you do any discount for us?")
    assert body["decision"]["action"] == "answer", body
    said = " ".join(reply["text"] for reply in body["replies"])
    assert "15% discount to registered charities" in said
