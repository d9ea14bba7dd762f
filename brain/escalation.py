"""Cues that a customer wants a person. The full escalation judgment lives in the brain issue."""

from __future__ import annotations

import re

# Phrases customers use to ask for a person, in the languages the gateway answers in.
# Kept as plain data so operators and translators can read and extend them.
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
)

_HUMAN_REQUEST = re.compile("|".join(f"(?:{p})" for p in HUMAN_REQUEST_PATTERNS), re.IGNORECASE)


def wants_human(text: str) -> bool:
    return bool(_HUMAN_REQUEST.search(text))
