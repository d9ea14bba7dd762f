"""The steps the offline and Claude answerers share (`gateway.answering.Answerer` is what they
promise the pipeline).

The pipeline starts `retrieve` as soon as a message arrives, so retrieval runs while the
conversation's state loads, then hands the passages to `decide`. Retrieval and the model
call share one deadline counted from the message's receipt (`brain.deadline`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from datetime import UTC, datetime

import structlog

from brain.config import BrainConfig
from brain.escalation import EscalationJudge, escalate
from brain.knowledge import KnowledgeBase
from brain.procedures import ProcedureEngine
from gateway.answering import Passage
from gateway.message import (
    Action,
    Conversation,
    Decision,
    Inbound,
    Reason,
    Source,
    TranscriptEntry,
)

log = structlog.get_logger(__name__)


def deadline_of(message: Inbound, config: BrainConfig) -> float:
    """The event-loop time by which the answer must be ready to send."""
    age = (datetime.now(UTC) - message.received_at).total_seconds()
    return asyncio.get_running_loop().time() + config.deadline - config.reserve - age


class GroundedAnswerer(ABC):
    """Retrieval under the deadline, the escalation rules first, the failure count after.

    Subclasses implement `answer`: what to say once no rule has decided alone.
    """

    def __init__(self, knowledge: KnowledgeBase, config: BrainConfig) -> None:
        self._knowledge = knowledge
        self._config = config
        self._judge = EscalationJudge(config.escalation, config.messages)
        self._warm = False
        self.procedures: ProcedureEngine | None = None  # the runtime sets it when configured

    async def retrieve(self, message: Inbound) -> list[Passage] | None:
        """Cut at the deadline, except the first search: it loads the embedding model, which
        no later message pays for, and a gateway that just started should still answer."""
        if not message.content:
            return []
        deadline = deadline_of(message, self._config)
        if deadline <= asyncio.get_running_loop().time():
            # The message waited past its deadline before a worker took it (an overload, a
            # backlog on the bus): no search, so `decide` sends the holding reply and escalates
            # (model_unavailable) at once, and the messages queued behind it are not delayed
            # by a search whose answer would come too late anyway.
            log.warning("brain.late_message", deadline=self._config.deadline)
            return None
        search = self._knowledge.search(
            message.content, k=self._config.max_passages, deadline=deadline if self._warm else None
        )
        if not self._warm:
            passages = await search
            self._warm = True
            return passages
        try:
            async with asyncio.timeout_at(deadline):
                return await search
        except TimeoutError:
            log.warning("brain.retrieval_timeout", deadline=self._config.deadline)
            return None

    async def decide(
        self,
        message: Inbound,
        conversation: Conversation,
        history: list[TranscriptEntry],
        passages: list[Passage] | None,
    ) -> Decision:
        if not message.content:
            return Decision(
                action=Action.ANSWER,
                reason=Reason.EMPTY_MESSAGE,
                explanation="The message had no text or attachment.",
                reply=self._config.messages.empty_message,
            )
        earlier = [entry for entry in history if entry.message_id != message.id]
        ruled = self._judge.before_answer(message.content, earlier)
        # A procedure does the account actions the rules would hand over; every other rule
        # (a person asked for, upset, a reserved topic) ends a procedure under way and wins.
        if self.procedures is not None and (ruled is None or ruled.reason is Reason.ACCOUNT_ACTION):
            if (procedure := await self.procedures.handle(message, conversation)) is not None:
                return procedure
        elif self.procedures is not None:
            self.procedures.abandon(conversation)
        if ruled is not None:
            return ruled
        if passages is None:
            decision = escalate(
                Reason.MODEL_UNAVAILABLE,
                f"The knowledge base did not answer within the {self._config.deadline:g} s "
                "deadline.",
                reply=self._config.messages.holding,
                confidence=0.0,
            )
        else:
            decision = await self.answer(message, earlier, passages)
        return self._judge.after_answer(decision, conversation)

    @abstractmethod
    async def answer(
        self, message: Inbound, history: list[TranscriptEntry], passages: list[Passage]
    ) -> Decision:
        """The answer, or an escalation, once no rule has decided alone."""

    async def close(self) -> None:
        """Nothing to release by default."""


def sources_of(passages: list[Passage]) -> tuple[Source, ...]:
    """The distinct sources of `passages`, in order."""
    seen: dict[str, Source] = {}
    for passage in passages:
        seen.setdefault(passage.source, Source(source=passage.source, title=passage.title))
    return tuple(seen.values())
