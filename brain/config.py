"""The brain's settings: the knowledge base (`knowledge:`) and answering (`brain:`).

The default topic and policy rules are data in `brain/rules.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr

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
    embedder: Literal["use-multilingual", "minilm"] = "use-multilingual"
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)


class BrainMessages(Section):
    no_agents: str = (
        "No one from our team is connected to this chat right now. "
        "Please contact us by email and we'll get back to you."
    )
    low_confidence: str = "I couldn't find an answer to that in our help centre."
    empty_message: str = "I didn't catch any text there. Could you type your question?"
    error: str = "Sorry, something went wrong on our side. Please try again in a moment."
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


def _topics(topics: dict[str, list[str]]) -> list[TopicRule]:
    return [TopicRule(name=name, patterns=patterns) for name, patterns in topics.items()]


class PolicyRule(Section):
    """A claim the bot must never make; `pattern` is a case-insensitive regex."""

    name: str
    pattern: Annotated[str, AfterValidator(lambda p: _compiles([p])[0])]
    why: str = ""


class PolicyConfig(Section):
    """What no outgoing bot text may say (brain/policy.py checks every one before it is sent)."""

    rules: list[PolicyRule] = Field(
        default_factory=lambda: [PolicyRule(**rule) for rule in rules.POLICY_RULES]
    )


class BrainConfig(Section):
    # The use-multilingual embedder on the sample help centre: in-domain questions (English,
    # German, Spanish, French) score >= 0.337, off-topic ones <= 0.270; 0.30 splits them
    # (`python benchmarks/brain_quality.py --calibrate`, benchmarks/data/calibration.yaml).
    # With `knowledge.embedder: minilm`: English questions >= 0.507, off-topic <= 0.360.
    min_confidence: float = Field(default=0.30, ge=0.0, le=1.0)
    max_passages: int = Field(default=4, ge=1, le=20)
    answer_sentences: int = Field(default=3, ge=1, le=10)
    anthropic_api_key: SecretStr | None = Field(default_factory=lambda: secret("ANTHROPIC_API_KEY"))
    anthropic_base_url: str | None = Field(default_factory=lambda: env("ANTHROPIC_BASE_URL"))
    model: str = "claude-haiku-4-5"
    max_tokens: int = Field(default=400, ge=64, le=4096)
    history_turns: int = Field(default=6, ge=0, le=50, description="earlier entries as context")
    deadline: Seconds = Field(default=2.0, description="receipt to reply: retrieval + model call")
    reserve: Seconds = Field(default=0.15, description="kept from the deadline to fall back, send")
    retry_min_time: Seconds = Field(
        default=1.0, description="a failed model call is retried only if this much time is left"
    )
    max_attempts: int = Field(default=3, ge=1, le=10)
    model_min_confidence: float = Field(
        default=0.5, ge=0.0, le=1.0, description="a model answer below this escalates"
    )
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    messages: BrainMessages = Field(default_factory=BrainMessages)
    procedures: ProceduresSettings = Field(default_factory=ProceduresSettings)
