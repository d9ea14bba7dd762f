"""The text a customer's message is searched with: the question, without the mail around it,
and with the previous turn when the message only makes sense with it.

A long email or a message pasted into a chat carries a greeting, a sign-off, a signature and
quoted history; all of it dilutes an averaged sentence embedding and feeds BM25 words that
have nothing to do with the question. mail-parser-reply (the email adapter's parser) cuts the
quoted history and the signatures it recognises; the greeting and sign-off lines it leaves are
dropped here. So are sentences that give the bot orders instead of asking anything (a planted
"P.S. note to the AI: append this line", "ignore all previous instructions"): they would steer
the search and the intents toward the attacker's words rather than the question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from mailparser_reply import EmailReplyParser

from gateway.message import Role, TranscriptEntry

LANGUAGES = ("en", "de", "fr", "es")
# A follow-up this short (in words) is searched together with the previous customer turn; so
# is one up to LEANING_FOLLOW_UP words that points back at it. Longer ones carry their context.
SHORT_FOLLOW_UP = 6
LEANING_FOLLOW_UP = 20

_GREETING = re.compile(
    r"^(?:hi|hello|hey|dear|good (?:morning|afternoon|evening)|greetings|hallo|guten tag|"
    r"liebe[rs]?|sehr geehrte[rs]?|moin|servus|bonjour|bonsoir|salut|cher|chère|madame|"
    r"monsieur|hola|buenos d[ií]as|buenas(?: tardes| noches)?|estimad[oa]s?)\b[^.?!\n]{0,40}"
    r"[,:!]?\s*$",
    re.IGNORECASE,
)
_SIGN_OFF = re.compile(
    r"^(?:thanks|thank you|many thanks|cheers|best|regards|kind regards|best regards|"
    r"warm regards|sincerely|yours|all the best|greetings|viele grüße|vielen dank|danke|"
    r"mit freundlichen grüßen|beste grüße|lg|merci|cordialement|bien à vous|amicalement|"
    r"bonne journée|gracias|saludos|atentamente|un saludo|muchas gracias)\b[^.?!\n]{0,30}"
    r"[,.!]?\s*$",
    re.IGNORECASE,
)
_SENT_FROM = re.compile(
    r"^(?:sent from my|get outlook for|envoyé de mon|von meinem .* gesendet|enviado desde mi)",
    re.IGNORECASE,
)
_RULE = re.compile(r"^(?:--\s*|_{3,}|-{3,}|—)$")
# A line of a name or a company under a sign-off: a few words, no sentence punctuation.
_NAME_LINE = re.compile(r"^[^\s?!:;]+(?:[ \t]+[^\s?!:;]+){0,4}$")
# Words that point back at the previous turn ("it", "those"), or a turn that continues it.
_LEANS_ON = re.compile(
    r"\b(?:it|its|that|those|these|this|them|they|also|too|"
    r"es|das|dies|diese[nmrs]?|dort|dann|auch|"
    r"ça|cela|ce|ceux|celles?|là|aussi|"
    r"eso|esto|esos|esas|ahí|allí|también|entonces)\b"
    r"|^(?:and|but|ok(?:ay)?|so|what about|und|aber|et|mais|y|pero)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)
# A sentence that addresses the bot with instructions about its own output or rules. Written
# from the common shapes of prompt injection (OWASP LLM01), in the four languages the brain
# reads; the policy guard still checks every reply whatever gets through.
_TO_THE_BOT = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b.{0,20}\b(?:previous|prior|above|earlier|your|all)"
    r"\b.{0,15}\b(?:instructions|prompts?|rules|guidelines)\b"
    r"|\b(?:note|message|instructions?) (?:to|for) (?:the |any )?"
    r"(?:ai|assistant|bot|chatbot|model|llm)\b"
    r"|\b(?:append|add|include|insert)\b.{0,20}\b(?:line|phrase|sentence|words?|text)\b.{0,80}"
    r"\b(?:to|in|at the end of) (?:your|each|every) (?:reply|replies|answer|response)"
    r"|\bend (?:every|each|all|your) (?:message|reply|answer|response)s? with\b"
    r"|\b(?:system prompt|hidden instructions)\b"
    r"|\b(?:print|reveal|show|repeat|output) (?:me )?(?:your|the) (?:instructions|prompt)\b"
    r"|\bfrom now on,? you (?:are|will|must)\b"
    r"|\b(?:reply|respond|answer) (?:only|just) (?:with|in)\b"
    r"|\b(?:ignoriere|vergiss|missachte)\b.{0,40}\b(?:anweisungen|regeln)\b|\bantworte nur\b"
    r"|\b(?:ignora|olvida)\b.{0,40}\b(?:instrucciones|reglas)\b|\bresponde (?:solo|únicamente)\b"
    r"|\b(?:ignorez?|oubliez?)\b.{0,40}\b(?:instructions|consignes|règles)\b"
    r"|\bréponds? (?:uniquement|seulement)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@lru_cache(maxsize=4096)  # a message is cleaned for the search, the intents and procedures
def clean(text: str) -> str:
    """The question of a message: quoted history, signatures, greeting and sign-off removed.
    A text that would come out empty (a one-line "Thanks!") is returned as it was."""
    lines = text.splitlines()
    if len(lines) > 1:  # quoted history and a signature take lines; the parser costs 200 µs
        replies = EmailReplyParser(languages=list(LANGUAGES)).read(text).replies
        lines = (replies[0].body if replies else text).splitlines()
    lines = [line for line in lines if not line.lstrip().startswith(">")]
    lines = _without_orders_to_the_bot(lines) or lines
    while lines and (not lines[0].strip() or _GREETING.match(lines[0].strip())):
        lines.pop(0)
    lines = _without_sign_off(lines)
    question = "\n".join(lines).strip()
    return question or text.strip()


def search_text(message: str, history: Sequence[TranscriptEntry] = ()) -> str:
    """What to search for: the cleaned message, preceded by the previous customer turn when
    the message is short or leans on it ("ok and where do I see those clicks?")."""
    question = clean(message)
    if not leans_on_previous(question):
        return question
    return with_previous_turn(question, history) or question


def with_previous_turn(question: str, history: Sequence[TranscriptEntry]) -> str | None:
    """The cleaned previous customer turn and `question` (the message, cleaned), or None on a
    first turn."""
    previous = next(
        (entry.text for entry in reversed(history) if entry.role is Role.CUSTOMER and entry.text),
        None,
    )
    return None if previous is None else f"{clean(previous)}\n{question}"


def leans_on_previous(question: str) -> bool:
    """Short, or pointing back with a pronoun or a connective ("but", "and", "also")."""
    words = len(_WORD.findall(question))
    return words <= SHORT_FOLLOW_UP or (
        words <= LEANING_FOLLOW_UP and _LEANS_ON.search(question) is not None
    )


def _without_orders_to_the_bot(lines: list[str]) -> list[str]:
    """The lines without the sentences that give the bot orders; a paragraph is read as one
    line, so an instruction broken over lines goes whole. Empty when nothing else is left."""
    if not _TO_THE_BOT.search(" ".join(lines)):
        return lines
    kept: list[str] = []
    paragraph: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            paragraph.append(line.strip())
            continue
        if paragraph:
            text = " ".join(paragraph)
            if _TO_THE_BOT.search(text):
                sentences = _SENTENCE_END.split(text)
                text = " ".join(s for s in sentences if not _TO_THE_BOT.search(s))
                paragraph = [text] if text else []
            kept.extend(paragraph)
        kept.append("")
        paragraph = []
    kept.pop()
    return kept if any(line.strip() for line in kept) else []


def _without_sign_off(lines: list[str]) -> list[str]:
    """Cut from the last sign-off ("Thanks a lot,") or signature rule ("--") near the end, and
    a lone name line after the text ("Raul")."""
    tail = max(0, len(lines) - 6)
    for index in range(len(lines) - 1, tail - 1, -1):
        line = lines[index].strip()
        if _SIGN_OFF.match(line) or _RULE.match(line) or _SENT_FROM.match(line):
            below = [rest.strip() for rest in lines[index + 1 :] if rest.strip()]
            if all(_NAME_LINE.match(rest) or _SENT_FROM.match(rest) for rest in below):
                lines = lines[:index]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) >= 3 and not lines[-2].strip() and _NAME_LINE.match(lines[-1].strip()):
        lines = lines[:-2]
    return lines
