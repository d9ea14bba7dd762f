"""The customer's yes, no and never mind, read the same way by procedures and the Claude
answerer before anything is changed on their account."""

from __future__ import annotations

import re

_WORDS = re.compile(r"[\w']+")
# A confirmation must be unambiguous: only a clear yes at the start of the reply counts, and
# a negation anywhere cancels it; everything else is "not confirmed". A word list (rather
# than the embedder, which puts "yes" and "no" close together) keeps that predictable.
_YES = frozenset(
    "yes y yeah yep yup sure ok okay confirm confirmed correct right please go "
    "ja jawohl jep genau klar gerne bitte richtig korrekt bestätigt "
    "oui si sí sim tak da".split()
)
_NO = frozenset("no not don't dont nope nah nein nicht kein keine non pas nada".split())
_ABANDON = (
    "never mind",
    "nevermind",
    "stop",
    "forget it",
    "cancel that",
    "quit",
    "vergiss es",
    "egal",
    "abbrechen",
    "stopp",
    "lass gut sein",
    "schon gut",
    "laisse tomber",
    "olvídalo",
)


def confirms(text: str) -> bool:
    words = _WORDS.findall(text.lower())
    return bool(words) and words[0] in _YES and not _NO.intersection(words)


def abandons(text: str) -> bool:
    flat = " ".join(_WORDS.findall(text.lower()))
    return any(flat == phrase or flat.startswith(phrase + " ") for phrase in _ABANDON)
