"""The offline answerer: grounded extractive answers from the knowledge base, no model needed.

It answers with the sentences of the best passages that share most words with the question,
names its sources, and reports the retrieval similarity as its confidence. Below the
configured threshold it escalates instead (the escalation rules run before, in `decide`).
It is also the Claude answerer's fallback when the model is unavailable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

from brain.answerer import GroundedAnswerer, sources_of
from gateway.answering import Draft, Passage
from gateway.message import Action, Conversation, Decision, Inbound, Reason, TranscriptEntry

_WORD = re.compile(r"[\w']+", re.UNICODE)
_LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(*\[])")
# Words that carry no topic; without this list "how do I" matches every how-to sentence.
_STOPWORDS = frozenset(
    (
        "a an and are as at be but by can could do does for from have how i if in is it its me my "
        "of on or our please so that the their them then there this to was we what when where "
        "which who why will with would you your yours hi hello thanks thank"
    ).split()
)
# Passages scoring within this margin of the best one may contribute sentences and sources.
_RELATED_MARGIN = 0.08


class OfflineAnswerer(GroundedAnswerer):
    async def answer(
        self,
        message: Inbound,
        conversation: Conversation,
        history: list[TranscriptEntry],
        passages: list[Passage],
        draft: Draft | None = None,  # extracted at once: nothing to show before it is whole
    ) -> Decision:
        confidence = passages[0].score if passages else 0.0
        if not passages or confidence < self._config.min_confidence:
            return Decision(
                action=Action.ESCALATE,
                reason=Reason.LOW_CONFIDENCE,
                explanation=(
                    f"Best knowledge-base match scored {confidence:.2f}, "
                    f"below the {self._config.min_confidence:.2f} threshold."
                ),
                confidence=confidence,
                sources=sources_of(passages[:1]),
                reply=self._config.messages.low_confidence,
            )
        used = [p for p in passages if p.score >= confidence - _RELATED_MARGIN][:2]
        return Decision(
            action=Action.ANSWER,
            explanation=f"Answered from {len(used)} knowledge-base passage(s).",
            confidence=confidence,
            sources=sources_of(used),
            reply=compose_answer(message.content, used, self._config.answer_sentences),
        )


def compose_answer(question: str, passages: list[Passage], max_units: int) -> str:
    """The passage sentences, table rows and list items that share most topic words with the
    question, in reading order. Table rows are spelled out with their column headers, so a
    row read on its own still says which price is which."""
    terms = _terms(question)
    candidates: list[tuple[float, int, _Unit]] = []
    for rank, passage in enumerate(passages):
        for position, unit in enumerate(_units(passage.text)):
            overlap = len(terms & _terms(unit.text))
            # Earlier passages and earlier units win ties: they are the better matches
            # and usually the ones that introduce the topic.
            score = overlap - 0.5 * rank - 0.01 * position
            candidates.append((score, rank * 1000 + position, unit))
    best = sorted(candidates, key=lambda c: c[0], reverse=True)[:max_units]
    chosen = [unit for _, _, unit in sorted(best, key=lambda c: c[1])]
    if not chosen:
        return passages[0].text.strip()
    answer = chosen[0].text
    for previous, unit in pairwise(chosen):
        answer += ("\n" if unit.line or previous.line else " ") + unit.text
    return answer


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    line: bool  # a table row or list item: shown on a line of its own


def _units(text: str) -> list[_Unit]:
    units: list[_Unit] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if len(lines) >= 2 and all(" | " in line for line in lines):
            header = [cell.strip() for cell in lines[0].split("|")]
            units.extend(_Unit(_spell_row(header, row), line=True) for row in lines[1:])
            continue
        prose: list[str] = []
        for line in lines:
            if _LIST_ITEM.match(line):
                units.append(_Unit(_LIST_ITEM.sub("", line), line=True))
            else:
                prose.append(line.lstrip("#> "))
        flat = " ".join(prose)
        units.extend(
            _Unit(sentence.strip(), line=False)
            for sentence in _SENTENCE_END.split(flat)
            if len(sentence.strip()) > 2
        )
    return units


def _spell_row(header: list[str], row: str) -> str:
    cells = [cell.strip() for cell in row.split("|")]
    pairs = [f"{name}: {value}" for name, value in zip(header[1:], cells[1:], strict=False)]
    return f"{cells[0]} — " + "; ".join(pairs) if pairs else cells[0]


def _terms(text: str) -> set[str]:
    return {
        word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS and len(word) > 1
    }
