"""Escalation judgment: when the bot hands a conversation to a person, and why.

Every escalation carries a reason code and one line a human agent can read. Two signals feed
it: the operator's regex rules (policy: a listed topic always escalates) and the message's
intent, read by exemplars (`brain/intents.py`), which catches the phrasings nobody listed.
Both run before any answer is worked out (a clear case costs no model call) and for both
answerers; Claude's own decision can add any reason through its tool call.

Reasons decided here:

- `human_requested`: the customer asks for a person (patterns in eight languages, or the
  intent);
- `policy_restricted`: a topic the operator reserves for people (`escalation.restricted_topics`),
  or a refund, dispute, legal, security or data-protection intent;
- `account_action`: a request for staff to act on the account (`escalation.account_actions`,
  or the intent: "please delete my site", not "how do I delete a site");
- `negative_sentiment`: frustration or anger, scored with a small lexicon over the last turns
  (below), or the intent (sarcasm, "third time I'm asking", no lexicon word needed);
- `low_confidence`, when the intent says the question is out of scope or one the docs never
  answer (a certification, a contractual promise): no passage is passed off as an answer;
- `repeated_failure`: the bot failed `escalation.repeated_failures` turns in a row.

`low_confidence` on weak retrieval and `model_unavailable` are decided by the answerers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from brain.config import BrainMessages, EscalationConfig, TopicRule
from brain.intents import Intent, Reading
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

    def before_answer(
        self, text: str, history: list[TranscriptEntry], reading: Reading | None = None
    ) -> Decision | None:
        """An escalation the rules or a fired intent decide alone, from the message, the
        entries before it and the message's intent. The operator's rules come first; an intent
        that hands over (person, policy, account, upset) before the lexicon; out of scope last,
        so an upset customer asking something off-topic is apologised to."""
        intent = reading.fired if reading else None
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
        if intent is not None and intent.reason is not Reason.LOW_CONFIDENCE:
            return self._intended(intent)
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
        if intent is not None:
            return self._intended(intent)
        return None

    def after_answer(
        self, decision: Decision, conversation: Conversation, reading: Reading | None = None
    ) -> Decision:
        """An escalation the answerer could only call `low_confidence` takes the reason of an
        intent that leans (a person, policy, account, upset: the agent then knows what the
        customer wants); a failed turn that makes `repeated_failures` in a row is escalated as
        such."""
        leaning = reading.leaning if reading else None
        if (
            leaning is not None
            and leaning.reason is not Reason.LOW_CONFIDENCE
            and decision.reason is Reason.LOW_CONFIDENCE
        ):
            named = self._intended(leaning)
            return decision.model_copy(
                update={
                    "reason": named.reason,
                    "explanation": f"{named.explanation} {decision.explanation}",
                    "reply": named.reply
                    if decision.reply in ("", self._messages.low_confidence)
                    else decision.reply,
                }
            )
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

    def _intended(self, intent: Intent) -> Decision:
        replies = {
            Reason.POLICY_RESTRICTED: self._messages.handover,
            Reason.ACCOUNT_ACTION: self._messages.handover,
            Reason.NEGATIVE_SENTIMENT: self._messages.apology,
            Reason.LOW_CONFIDENCE: self._messages.low_confidence,
        }
        return escalate(
            intent.reason,
            f"The message reads as {intent.describe()}.",
            reply=replies.get(intent.reason, ""),
            confidence=intent.score,
        )


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
