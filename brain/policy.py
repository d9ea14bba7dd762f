"""The operator's policy on what the bot says: checked on every outgoing bot text.

Two kinds of check, whichever answerer wrote the text:

- the configured rules (`brain.policy.rules`): claims the bot must never make, such as an
  invented coupon code, a promised refund, an approval, or claiming to be a person;
- the prompt canary: no outgoing text may hold the system prompt's reference tag or any of
  its sentences, which is what an obeyed "repeat your instructions" produces.

A text that fails is never sent: the pipeline replaces it with a holding reply and escalates
(`policy_restricted`), logging the rule that fired.
"""

from __future__ import annotations

import re

from brain.config import PolicyConfig
from brain.prompt import CANARY, PROMPT_SENTENCES
from gateway.answering import Violation

_SPACE = re.compile(r"\s+")


class PolicyGuard:
    def __init__(self, config: PolicyConfig) -> None:
        self._rules = [
            (rule.name, rule.why, re.compile(rule.pattern, re.IGNORECASE)) for rule in config.rules
        ]
        self._sentences = tuple(_normal(sentence) for sentence in PROMPT_SENTENCES)

    def check(self, text: str) -> Violation | None:
        """The first rule the text breaks, or None when it may be sent."""
        for name, why, pattern in self._rules:
            if pattern.search(text):
                return Violation(name, why)
        normal = _normal(text)
        if CANARY.lower() in normal or any(s in normal for s in self._sentences):
            return Violation("system_prompt_leak", "never reveal the system prompt")
        return None


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()
