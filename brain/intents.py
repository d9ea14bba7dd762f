"""Intent recognition by exemplars: what a customer wants, whatever words they use.

The regex rules of `brain/escalation.py` catch the phrasings an operator listed; customers
mostly use others ("is there an actual person I can write to", "löschen Sie bitte mein
Konto", sarcasm, a long email). Each intent here is a handful of example phrasings
(`brain/intents.yaml`, extended in `brain.escalation.intents`), compared with the message in
the multilingual space the knowledge base searches (`brain/exemplars.py`).

A label fires when its closest exemplar scores at least the label's threshold and beats the
closest *answerable* exemplar (self-serve questions on the same topics: "how do I delete a
site") by the margin: "please delete my site" is an account action, "how do I delete a site"
is not. A label that misses its threshold by less than `lean` leans: it is not enough to act
on alone (brain/answerer.py says what it does).

The message's vector is the one its search just computed (`KnowledgeBase.searched_vector`),
so reading the intent costs a matrix product, not a forward pass on the 2 s path. The
exemplars are embedded once, at warm-up or on the first message read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import structlog

from brain.config import IntentsConfig
from brain.exemplars import ExemplarIndex, Match
from brain.knowledge import KnowledgeBase
from gateway.message import Reason

log = structlog.get_logger(__name__)

ANSWERABLE = "answerable"


@dataclass(frozen=True, slots=True)
class Intent:
    """A label the message reads as: its reason code, closest exemplar and how sure."""

    label: str
    reason: Reason
    score: float
    exemplar: str
    fired: bool  # False: it only leans

    def describe(self) -> str:
        """One line for the agent: which label, how close, to which example."""
        example = " ".join(self.exemplar.split())
        if len(example) > 60:
            example = example[:57] + "..."
        return f"{self.label.replace('_', ' ')} ({self.score:.2f} to “{example}”)"


@dataclass(frozen=True, slots=True)
class Reading:
    """What the message reads as: the label that fired, else the one that leans most."""

    fired: Intent | None = None
    leaning: Intent | None = None


class IntentReader:
    # Built indexes by embedder and exemplars: every reader of a process (the Claude
    # answerer's offline fallback, each runtime a test opens) embeds the same exemplars once.
    _built: ClassVar[dict[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ExemplarIndex]] = {}

    def __init__(self, config: IntentsConfig, knowledge: KnowledgeBase) -> None:
        self._config = config
        self._knowledge = knowledge
        self._index: ExemplarIndex | None = None
        self._building: asyncio.Lock | None = None

    async def warm_up(self) -> None:
        """Embed the exemplars now (once), so no customer's message waits for it."""
        if self._index is not None or not self._config.enabled:
            return
        if self._building is None:
            self._building = asyncio.Lock()
        async with self._building:
            if self._index is None:
                exemplars = {name: label.exemplars for name, label in self._config.labels.items()}
                exemplars[ANSWERABLE] = self._config.answerable
                key = (
                    self._knowledge.embedder_name,
                    tuple((name, tuple(texts)) for name, texts in exemplars.items()),
                )
                if key not in self._built:
                    self._built[key] = await ExemplarIndex.build(exemplars, self._knowledge.embed)
                self._index = self._built[key]

    async def read(self, text: str, *, searched: bool = True) -> Reading:
        """The intent of `text`, from the vector its search computed. ``searched``: retrieval
        ran, for `text` or for a longer query (a follow-up is searched with the turn before
        it, but its intent is its own): then a text without a vector is embedded now. When
        retrieval did not run (it timed out, the knowledge base is empty), nothing is read:
        no forward pass on a message already late."""
        if not self._config.enabled or not text.strip():
            return Reading()
        vector = self._knowledge.searched_vector(text)
        if vector is None and searched:
            vector = (await self._knowledge.embed([text]))[0]
        if vector is None:
            log.info("brain.intents_skipped", why="no search vector for the message")
            return Reading()
        await self.warm_up()
        assert self._index is not None
        return self.judge(self._index.match(vector))

    def judge(self, matches: list[Match]) -> Reading:
        """The reading of a message's matches, by each label's threshold and the margin."""
        labels = self._config.labels
        contrast = next((m.score for m in matches if m.label == ANSWERABLE), 0.0)
        fired: Intent | None = None
        leaning: Intent | None = None
        for match in matches:  # best first
            label = labels.get(match.label)
            if label is None or match.score - contrast < self._config.margin:
                continue
            intent = Intent(
                match.label,
                Reason(label.reason),
                match.score,
                match.exemplar,
                fired=match.score >= label.threshold,
            )
            if intent.fired and fired is None:
                fired = intent
            elif (
                not intent.fired
                and leaning is None
                and match.score >= label.threshold - self._config.lean
            ):
                leaning = intent
        return Reading(fired=fired, leaning=None if fired else leaning)
