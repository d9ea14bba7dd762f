"""The offline answerer: grounded extractive answers from the knowledge base, no model needed.

It answers with the sentences of the best passages that share most words with the question,
names its sources, and reports the retrieval similarity as its confidence. Below the
configured threshold, or when the customer asks for a person, it escalates instead.
"""

from __future__ import annotations

import re

from brain.escalation import wants_human
from brain.knowledge import KnowledgeBase, Passage
from gateway.config import BrainConfig
from gateway.message import (
    Action,
    Conversation,
    Decision,
    Inbound,
    Reason,
    Source,
    TranscriptEntry,
)

_WORD = re.compile(r"[\w']+", re.UNICODE)
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


class OfflineAnswerer:
    def __init__(self, knowledge: KnowledgeBase, config: BrainConfig) -> None:
        self._knowledge = knowledge
        self._config = config

    async def decide(
        self, message: Inbound, conversation: Conversation, history: list[TranscriptEntry]
    ) -> Decision:
        question = message.content
        if not question:
            return Decision(
                action=Action.ANSWER,
                reason=Reason.EMPTY_MESSAGE,
                explanation="The message had no text or attachment.",
                reply=self._config.messages.empty_message,
            )
        if wants_human(question):
            return Decision(
                action=Action.ESCALATE,
                reason=Reason.HUMAN_REQUESTED,
                explanation="The customer asked to talk to a person.",
                confidence=1.0,
            )
        passages = await self._knowledge.search(question, k=self._config.max_passages)
        confidence = passages[0].score if passages else 0.0
        if confidence < self._config.min_confidence:
            return Decision(
                action=Action.ESCALATE,
                reason=Reason.LOW_CONFIDENCE,
                explanation=(
                    f"Best knowledge-base match scored {confidence:.2f}, "
                    f"below the {self._config.min_confidence:.2f} threshold."
                ),
                confidence=confidence,
                sources=_sources(passages[:1]),
                reply=self._config.messages.low_confidence,
            )
        used = [p for p in passages if p.score >= confidence - _RELATED_MARGIN][:2]
        return Decision(
            action=Action.ANSWER,
            explanation=f"Answered from {len(used)} knowledge-base passage(s).",
            confidence=confidence,
            sources=_sources(used),
            reply=compose_answer(question, used, self._config.answer_sentences),
        )


def compose_answer(question: str, passages: list[Passage], max_sentences: int) -> str:
    """The passage sentences that share most topic words with the question, in reading order."""
    terms = _terms(question)
    candidates: list[tuple[float, int, str]] = []
    for rank, passage in enumerate(passages):
        for position, sentence in enumerate(_sentences(passage.text)):
            overlap = len(terms & _terms(sentence))
            # Earlier passages and earlier sentences win ties: they are the better matches
            # and usually the ones that introduce the topic.
            candidates.append(
                (overlap - 0.5 * rank - 0.01 * position, rank * 1000 + position, sentence)
            )
    best = sorted(candidates, reverse=True)[:max_sentences]
    chosen = [sentence for _, _, sentence in sorted(best, key=lambda c: c[1])]
    return " ".join(chosen) if chosen else passages[0].text.strip()


def _sentences(text: str) -> list[str]:
    lines = (line.strip(" -*#>|\t") for line in text.splitlines())
    flat = " ".join(line for line in lines if line)
    return [s.strip() for s in _SENTENCE_END.split(flat) if len(s.strip()) > 2]


def _terms(text: str) -> set[str]:
    return {
        word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS and len(word) > 1
    }


def _sources(passages: list[Passage]) -> tuple[Source, ...]:
    seen: dict[str, Source] = {}
    for passage in passages:
        seen.setdefault(passage.source, Source(source=passage.source, title=passage.title))
    return tuple(seen.values())
