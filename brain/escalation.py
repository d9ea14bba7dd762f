"""Escalation judgment: when the bot hands a conversation to a person, and why.

Every escalation carries a reason code and one line a human agent can read. The rules here
run before any answer is worked out (a clear case costs no model call) and for both
answerers; Claude's own decision can add `human_requested`, `negative_sentiment` and the
others through its tool call, for what no pattern catches.

Reasons decided here:

- `human_requested`: the customer asks for a person (patterns in eight languages);
- `policy_restricted`: a topic the operator reserves for people (`escalation.restricted_topics`);
- `account_action`: a request to act on the account (`escalation.account_actions`);
- `negative_sentiment`: frustration or anger, scored with a small lexicon (below);
- `repeated_failure`: the bot failed `escalation.repeated_failures` turns in a row.

`low_confidence` and `model_unavailable` are decided by the answerers, which see the scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from brain.config import BrainMessages, EscalationConfig, TopicRule
from gateway.message import (
    Action,
    Conversation,
    Decision,
    Reason,
    Role,
    TranscriptEntry,
)

# Phrases customers use to ask for a person. Kept as plain data so operators and translators
# can read and extend them.
HUMAN_REQUEST_PATTERNS: tuple[str, ...] = (
    # English
    r"\b(talk|speak|chat)\b.{0,20}\b(human|person|someone|somebody|agent|representative|rep|staff)\b",
    r"\b(real|live|actual)\s+(person|human|agent|people)\b",
    r"\b(human|customer service|support)\s+(agent|representative|rep)\b",
    r"\b(get|give|connect|transfer)\b.{0,20}\b(human|person|agent|representative|operator)\b",
    r"^\s*(agent|human|operator|representative)\s*[.!?]*\s*$",
    # German
    r"\b(mit\s+)?(einem|einer)\s+(menschen|mitarbeiter(in)?|person)\b",
    r"\b(echten|echte)\s+(menschen|person|mitarbeiter)\b",
    # Spanish
    r"\b(hablar|comunicarme)\b.{0,20}\b(persona|humano|agente|representante)\b",
    r"\b(persona|agente)\s+real\b",
    # French
    r"\b(parler|discuter)\b.{0,20}\b(personne|humain|agent|conseiller|conseillère)\b",
    r"\b(vraie\s+personne|être\s+humain)\b",
    # Italian
    r"\b(parlare|passami)\b.{0,20}\b(persona|operatore|operatrice|umano)\b",
    # Portuguese
    r"\b(falar)\b.{0,20}\b(pessoa|atendente|humano|agente)\b",
    # Dutch
    r"\b(spreken|praten)\b.{0,20}\b(mens|medewerker|persoon)\b",
    r"\b(mens|medewerker)\b.{0,20}\b(spreken|praten)\b",
    # Polish
    r"\b(rozmawiać|porozmawiać)\b.{0,20}\b(człowiekiem|konsultantem|osobą)\b",
)

_HUMAN_REQUEST = re.compile("|".join(f"(?:{p})" for p in HUMAN_REQUEST_PATTERNS), re.IGNORECASE)

# No sentiment library is installed that reads German, Spanish and French (VADER is English
# only), so upset is scored with this small lexicon: strong words count 2, mild ones 1.
# It has no negation handling ("not bad" scores nothing, "not happy" scores "happy" as
# nothing): the words below are rarely negated in complaints.
_STRONG = (
    "furious|outraged|ridiculous|unacceptable|disgraceful|disgusting|pathetic|useless|"
    "incompetent|scam|worst|terrible|horrible|awful|appalling|fed up|sick of|wtf|garbage|"
    "rubbish|crap|verärgert|stinksauer|enojad[oa]|cabread[oa]|en colère|"
    "unverschämt|frechheit|lächerlich|inakzeptabel|wütend|katastrophe|betrug|nutzlos|"
    "sauer|inaceptable|ridículo|vergüenza|estafa|hart[oa]|furios[oa]|pésimo|inútil|"
    "indignante|inadmissible|inacceptable|ridicule|honte|arnaque|furieux|furieuse|"
    "scandaleux|lamentable|en ai marre"
)
_MILD = (
    "frustrat\\w*|annoy\\w*|disappoint\\w*|angry|upset|still waiting|again|third time|"
    "no one|nobody|never arrived|not happy|unhappy|complain\\w*|"
    "enttäuscht|genervt|ärgerlich|immer noch|schon wieder|beschwer\\w*|"
    "decepcionad[oa]|molest[oa]|enfadad[oa]|todavía|otra vez|queja|"
    "déçue?|énervée?|toujours pas|encore une fois|plainte|mécontente?"
)
_STRONG_WORDS = re.compile(rf"\b(?:{_STRONG})\b", re.IGNORECASE)
_MILD_WORDS = re.compile(rf"\b(?:{_MILD})\b", re.IGNORECASE)
_SHOUTED_WORD = re.compile(r"\b[A-ZÄÖÜÉÈÀÑ]{3,}\b")
_EXCLAMATIONS = re.compile(r"[!?]*![!?]*!")  # two or more, mixed with "?"
# Earlier upset messages add to the score: repeated complaints.
_RECENT_CUSTOMER_MESSAGES = 4


def wants_human(text: str) -> str | None:
    """The phrase asking for a person, if the text has one."""
    match = _HUMAN_REQUEST.search(text)
    return match.group(0).strip() if match else None


def upset_score(text: str) -> float:
    """How upset a message reads: lexicon hits plus shouting and repeated exclamation marks."""
    score = 2.0 * len(_STRONG_WORDS.findall(text)) + len(_MILD_WORDS.findall(text))
    if len(_SHOUTED_WORD.findall(text)) >= 2:
        score += 1
    if _EXCLAMATIONS.search(text):
        score += 1
    return score


@dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, rule: TopicRule) -> _Topic:
        joined = "|".join(f"(?:{p})" for p in rule.patterns)
        return cls(rule.name, re.compile(joined, re.IGNORECASE | re.MULTILINE))


class EscalationJudge:
    def __init__(self, config: EscalationConfig, messages: BrainMessages) -> None:
        self._config = config
        self._messages = messages
        self._restricted = [_Topic.of(rule) for rule in config.restricted_topics]
        self._account = [_Topic.of(rule) for rule in config.account_actions]

    def before_answer(self, text: str, history: list[TranscriptEntry]) -> Decision | None:
        """An escalation the rules decide alone from the message and the entries before it."""
        if phrase := wants_human(text):
            return escalate(
                Reason.HUMAN_REQUESTED, f"The customer asked for a person: “{phrase[:60]}”."
            )
        if topic := _first_match(self._restricted, text):
            return escalate(
                Reason.POLICY_RESTRICTED,
                f"The message is about {topic.replace('_', ' ')}, which the team handles.",
                reply=self._messages.handover,
            )
        if topic := _first_match(self._account, text):
            return escalate(
                Reason.ACCOUNT_ACTION,
                "The customer asks for a change on their account that the bot cannot make.",
                reply=self._messages.handover,
            )
        now = upset_score(text)
        repeated = 0
        if now >= 1:  # earlier complaints count only when this message complains too
            earlier = [
                upset_score(entry.text)
                for entry in history[-2 * _RECENT_CUSTOMER_MESSAGES :]
                if entry.role is Role.CUSTOMER
            ][-_RECENT_CUSTOMER_MESSAGES:]
            repeated = sum(1 for score in earlier if score >= 1)
        score = now + repeated
        if score >= self._config.sentiment_threshold:
            why = f"The customer sounds upset (score {score:g}"
            why += f", {repeated} earlier complaint(s))." if repeated else ")."
            return escalate(Reason.NEGATIVE_SENTIMENT, why, reply=self._messages.apology)
        return None

    def after_answer(self, decision: Decision, conversation: Conversation) -> Decision:
        """A failed turn that makes `repeated_failures` in a row is escalated as such."""
        limit = self._config.repeated_failures
        if decision.is_failed_turn and conversation.failed_turns + 1 >= limit:
            return decision.model_copy(
                update={
                    "reason": Reason.REPEATED_FAILURE,
                    "explanation": f"The bot could not answer {limit} turns in a row; "
                    f"this time: {decision.explanation}",
                }
            )
        return decision


def escalate(
    reason: Reason, explanation: str, *, reply: str = "", confidence: float = 1.0
) -> Decision:
    return Decision(
        action=Action.ESCALATE,
        reason=reason,
        explanation=explanation,
        confidence=confidence,
        reply=reply,
    )


def _first_match(topics: list[_Topic], text: str) -> str | None:
    return next((topic.name for topic in topics if topic.pattern.search(text)), None)
