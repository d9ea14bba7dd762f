"""The operator's policy on what the bot says: checked on every outgoing bot text.

Two kinds of check, whichever answerer wrote the text:

- the configured rules (`brain.policy.rules`): claims the bot must never make, such as an
  invented coupon code, a promised refund, an approval, or claiming to be a person; a rule
  marked `unless_quoted` lets a claim through that a knowledge-base passage the reply was
  drawn from makes word for word (the business's own documented offer);
- the prompt canary: no outgoing text may hold the system prompt's reference tag or any of
  its sentences, which is what an obeyed "repeat your instructions" produces.

A text that fails is never sent: the pipeline replaces it with a holding reply and escalates
(`policy_restricted`), logging the rule that fired.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from brain.config import PolicyConfig
from brain.prompt import CANARY, PROMPT_SENTENCES
from gateway.answering import Violation

_SPACE = re.compile(r"\s+")
_EMPHASIS = re.compile(r"[*_`]+")  # markdown's, which a reply may keep or drop


class PolicyGuard:
    def __init__(self, config: PolicyConfig) -> None:
        self._rules = [
            (rule.name, rule.why, re.compile(rule.pattern, re.IGNORECASE), rule.unless_quoted)
            for rule in config.rules
        ]
        self._sentences = tuple(_normal(sentence) for sentence in PROMPT_SENTENCES)

    def check(self, text: str, quotes: Sequence[str] = ()) -> Violation | None:
        """The first rule the text breaks, or None when it may be sent; `quotes`: the
        knowledge-base passages the reply was drawn from."""
        for name, why, pattern, unless_quoted in self._rules:
            for claim in pattern.finditer(text):
                if not (unless_quoted and _quoted(claim.group(), quotes)):
                    return Violation(name, why)
        normal = _normal(text)
        if CANARY.lower() in normal or any(s in normal for s in self._sentences):
            return Violation("system_prompt_leak", "never reveal the system prompt")
        return None


def _quoted(claim: str, quotes: Sequence[str]) -> bool:
    """Whether one of `quotes` says `claim` word for word (case, spacing and markdown's
    emphasis aside); read only for a claim a rule matched, which is rare."""
    said = _EMPHASIS.sub("", _normal(claim))
    return any(said in _EMPHASIS.sub("", _normal(quote)) for quote in quotes)


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()
