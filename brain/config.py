"""The brain's settings: the knowledge base (`knowledge:`) and answering (`brain:`).

The default topic and policy rules are data in `brain/rules.py`; the default intents and their
exemplars are data in `brain/intents.yaml`.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, SecretStr, model_validator

from brain import rules
from brain.procedure_config import ProceduresSettings
from gateway.config import Seconds, Section, env, secret


class CrawlConfig(Section):
    """How `gateway kb crawl` and URL sources fetch a website."""

    max_pages: int = Field(default=500, ge=1, description="pages fetched per crawl at most")
    concurrency: int = Field(default=4, ge=1, le=32, description="requests in flight at once")
    timeout: Seconds = Field(default=20.0, description="per request, connect to last byte")
    user_agent: str = "support-gateway-crawler/1.0 (knowledge-base indexer; honours robots.txt)"


class KnowledgeConfig(Section):
    sources: list[str] = Field(default_factory=list)
    collection: str = "knowledge"
    chroma_url: str | None = Field(default_factory=lambda: env("CHROMA_URL"))
    auto_ingest: bool = True
    # Chosen on benchmarks/brain_quality.py; a switch rebuilds the collection on the next ingest.
    embedder: Literal["use-multilingual", "minilm", "e5-small"] = "use-multilingual"
    # The embedder in a child process: its own GIL and core, away from the event loop's.
    embedder_process: bool = False
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    # Where `gateway kb drafts build` writes pages for review; unset: data_dir/kb-drafts.
    drafts_dir: Path | None = None


class BrainMessages(Section):
    no_agents: str = (
        "No one from our team is connected to this chat right now. "
        "Please contact us by email and we'll get back to you."
    )
    low_confidence: str = "I couldn't find an answer to that in our help centre."
    empty_message: str = "I didn't catch any text there. Could you type your question?"
    error: str = "Sorry, something went wrong on our side. Please try again in a moment."
    # Said when no text of the answer is ready by `brain.deadline`; the answer follows.
    wait: str = "One moment…"
    # Said at once when the model calls a tool that will not be back by `brain.deadline`.
    checking: str = "Let me check that for you…"
    # Said when a call to the business's API fails with Claude (procedures have their own).
    tool_failed: str = (
        "Sorry, I couldn't reach our systems just now, so I've passed this to our team."
    )
    # Said instead of an answer when the model is unavailable or a reply broke the policy.
    holding: str = "Sorry, I can't give you a reliable answer to that right now."
    # Said when a rule hands the conversation over (a reserved topic, an account action).
    handover: str = "That's something a member of our team needs to handle for you."
    # Said when the customer is upset.
    apology: str = "I'm sorry this has been frustrating."


def _compiles(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression {pattern!r}: {exc}") from None
    return patterns


class TopicRule(Section):
    """A named topic recognised in customer messages by case-insensitive regexes."""

    name: str
    patterns: Annotated[list[str], AfterValidator(_compiles)]


IntentReason = Literal[
    "human_requested", "account_action", "policy_restricted", "negative_sentiment", "low_confidence"
]


class IntentLabel(Section):
    """One intent: the reason it escalates with, its example phrasings and its threshold."""

    reason: IntentReason
    # Cosine similarity of the message to the label's closest exemplar at which it fires.
    threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    exemplars: list[str] = Field(min_length=1)


@cache
def _shipped_intents() -> dict[str, Any]:
    text = resources.files("brain").joinpath("intents.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _shipped_labels() -> dict[str, IntentLabel]:
    return {name: IntentLabel(**label) for name, label in _shipped_intents()["labels"].items()}


class IntentsConfig(Section):
    """Intent recognition by exemplars (brain/intents.py), on top of the regex rules.

    `labels` and `answerable` default to `brain/intents.yaml`. A label given here keeps the
    shipped fields it does not name: `exemplars` replaces the shipped examples, `extra_exemplars`
    adds to them; a new label needs `reason` and `exemplars`. Likewise `answerable` replaces
    the self-serve contrast examples and `extra_answerable` adds to them.
    """

    enabled: bool = True
    # A label fires only when it beats the closest answerable example by this much.
    margin: float = Field(default=0.04, ge=0.0, le=1.0)
    # A label within this much below its threshold "leans": it names the reason of an
    # escalation the answerer decided without one it could tell (brain/answerer.py).
    lean: float = Field(default=0.08, ge=0.0, le=1.0)
    labels: dict[str, IntentLabel] = Field(default_factory=lambda: _shipped_labels())
    answerable: list[str] = Field(default_factory=lambda: list(_shipped_intents()["answerable"]))

    @model_validator(mode="before")
    @classmethod
    def _merge_with_shipped(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        shipped = _shipped_intents()
        if isinstance(labels := data.get("labels"), dict):
            merged: dict[str, Any] = dict(shipped["labels"])
            for name, given in labels.items():
                if not isinstance(given, dict):
                    merged[name] = given
                    continue
                label = {**merged.get(name, {}), **given}
                extra = label.pop("extra_exemplars", None)
                if isinstance(extra, list):
                    label["exemplars"] = [*label.get("exemplars", []), *extra]
                merged[name] = label
            data["labels"] = merged
        extra = data.pop("extra_answerable", None)
        if isinstance(extra, list):
            data["answerable"] = [*data.get("answerable", shipped["answerable"]), *extra]
        return data


class EscalationConfig(Section):
    """When the bot hands a conversation over rather than answer (brain/escalation.py)."""

    # Score of brain/escalation.py's multilingual lexicon (strong word 2, mild 1, shouting and
    # "!!" 1 each, each earlier upset message in the last turns 1) at which the bot hands over.
    sentiment_threshold: float = Field(default=3.0, gt=0)
    repeated_failures: int = Field(default=3, ge=1, description="failed turns in a row")
    restricted_topics: list[TopicRule] = Field(
        default_factory=lambda: _topics(rules.RESTRICTED_TOPICS),
        description="topics the operator reserves for people (policy_restricted)",
    )
    account_actions: list[TopicRule] = Field(
        default_factory=lambda: _topics(rules.ACCOUNT_ACTIONS),
        description="things done on an account that the bot cannot do (account_action)",
    )
    intents: IntentsConfig = Field(default_factory=IntentsConfig)


def _topics(topics: dict[str, list[str]]) -> list[TopicRule]:
    return [TopicRule(name=name, patterns=patterns) for name, patterns in topics.items()]


class PolicyRule(Section):
    """A claim the bot must never make; `pattern` is a case-insensitive regex."""

    name: str
    pattern: Annotated[str, AfterValidator(lambda p: _compiles([p])[0])]
    why: str = ""
    # True: a claim that a knowledge-base passage the reply was drawn from makes word for word
    # passes (the business's own documented offer, "we offer a 15% discount to nonprofits",
    # not one the bot made up). The shipped coupon, discount and refund rules are so; a rule
    # such as "no prices in chat" leaves it off, as there the quote is what is forbidden.
    unless_quoted: bool = False


class PolicyConfig(Section):
    """What no outgoing bot text may say (brain/policy.py checks every one before it is sent)."""

    rules: list[PolicyRule] = Field(
        default_factory=lambda: [PolicyRule.model_validate(rule) for rule in rules.POLICY_RULES]
    )


class BrainConfig(Section):
    # The best passage's score below which the offline answerer escalates (low_confidence).
    # Off-topic and unanswerable questions are judged by intent (brain/intents.py), so this
    # only catches what retrieval cannot find: on benchmarks/data/plausible/dev.yaml
    # (use-multilingual) 0.30 escalated 9 of 66 answerable cases (real phrasing scores
    # 0.23-0.30), 0.22 escalates none of them. With `knowledge.embedder: minilm` scores run higher.
    min_confidence: float = Field(default=0.22, ge=0.0, le=1.0)
    max_passages: int = Field(default=4, ge=1, le=20)
    answer_sentences: int = Field(default=3, ge=1, le=10)
    anthropic_api_key: SecretStr | None = Field(default_factory=lambda: secret("ANTHROPIC_API_KEY"))
    anthropic_base_url: str | None = Field(default_factory=lambda: env("ANTHROPIC_BASE_URL"))
    model: str = "claude-haiku-4-5"
    max_tokens: int = Field(default=400, ge=64, le=4096)
    history_turns: int = Field(default=6, ge=0, le=50, description="earlier entries as context")
    deadline: Seconds = Field(
        default=2.0,
        description="receipt to the first response: retrieval, then the answer's first "
        "sentence, else the holding line (messages.wait)",
    )
    answer_deadline: Seconds = Field(
        default=8.0,
        description="receipt to the complete answer (at least `deadline`): a model still "
        "writing then is given up for the offline answer or an escalation",
    )
    reserve: Seconds = Field(default=0.15, description="kept from a deadline to fall back, send")
    retry_min_time: Seconds = Field(
        default=1.0, description="a failed model call is retried only if this much time is left"
    )
    max_attempts: int = Field(default=3, ge=1, le=10)
    max_tool_rounds: int = Field(
        default=3, ge=0, le=10, description="model turns that call tools before it must decide"
    )
    confirm_within: Seconds = Field(
        default=600.0, description="how long an action the model proposed waits for a yes"
    )
    model_min_confidence: float = Field(
        default=0.5, ge=0.0, le=1.0, description="a model answer below this escalates"
    )
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    messages: BrainMessages = Field(default_factory=BrainMessages)

    @property
    def answer_time(self) -> float:
        """Seconds from receipt to the complete answer: `answer_deadline`, or `deadline` where
        that is longer (a config that only lengthens `deadline` lengthens both)."""
        return max(self.answer_deadline, self.deadline)

    procedures: ProceduresSettings = Field(default_factory=ProceduresSettings)
