"""The steps the offline and Claude answerers share (`gateway.answering.Answerer` is what they
promise the pipeline).

The pipeline starts `retrieve` as soon as the transcript is read, so retrieval runs while the
conversation's state loads, then hands the passages to `decide`. Retrieval must end by the
first-response deadline counted from the message's receipt (`brain.deadline`); the answer
itself may take until `brain.answer_deadline`, the pipeline saying a holding line meanwhile.

How the signals and the answerer's own judgment combine, in `decide`:

1. The operator's regex rules escalate first: a listed topic is policy.
2. An intent that fires (`brain/intents.py`) escalates next, with its reason, before the
   answerer is asked: with Claude the model is not called for a clear case.
3. Otherwise the answerer decides. The offline one escalates `low_confidence` below
   `brain.min_confidence`; Claude's structured decision stands as the model gave it: it may
   escalate on its own, with any reason, for what neither rules nor intents caught, and an
   answer below `brain.model_min_confidence` escalates.
4. An intent that only leans (just under its threshold) does not act alone; when the
   answerer escalated with `low_confidence` (nothing answered it, or the model was unsure),
   the leaning intent names the reason instead: "please move my sites to my colleague" is an
   account action for the agent, not an unanswered question.

The intent is read from the vector the message's search computed: no second forward pass.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from brain.config import BrainConfig
from brain.escalation import EscalationJudge, escalate
from brain.intents import IntentReader, Reading
from brain.knowledge import KnowledgeBase
from brain.procedures import ProcedureEngine
from brain.query import clean, search_text, with_previous_turn
from gateway.answering import Draft, Passage
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

# What an intent may read a message as and still leave it to a matching procedure.
PROCEDURES_TAKE = frozenset(
    {Reason.ACCOUNT_ACTION, Reason.POLICY_RESTRICTED, Reason.LOW_CONFIDENCE}
)


def deadline_of(message: Inbound, config: BrainConfig, seconds: float | None = None) -> float:
    """The event-loop time, `seconds` after the message's receipt (default `brain.deadline`)
    less the reserve, by which a step must be done."""
    age = (datetime.now(UTC) - message.received_at).total_seconds()
    budget = config.deadline if seconds is None else seconds
    return asyncio.get_running_loop().time() + budget - config.reserve - age


class GroundedAnswerer(ABC):
    """Retrieval under the deadline, the escalation rules first, the failure count after.

    Subclasses implement `answer`: what to say once no rule has decided alone.
    """

    def __init__(self, knowledge: KnowledgeBase, config: BrainConfig) -> None:
        self._knowledge = knowledge
        self._config = config
        self._judge = EscalationJudge(config.escalation, config.messages)
        self._intents = IntentReader(config.escalation.intents, knowledge)
        self._warm = False
        self.procedures: ProcedureEngine | None = None  # the runtime sets it when configured

    async def warm_up(self) -> None:
        """Load the embedding model and embed the intents' exemplars before the first message."""
        await asyncio.to_thread(self._knowledge.warm_up)
        await self._intents.warm_up()
        self._warm = True  # the model is loaded: from now on every search is cut at its deadline

    async def retrieve(
        self, message: Inbound, history: Sequence[TranscriptEntry] = ()
    ) -> list[Passage] | None:
        """Cut at the deadline, except the first search: it loads the embedding model, which
        no later message pays for, and a gateway that just started should still answer.

        The search is for the question without greeting, signature and quotes, and with the
        customer's previous turn when this one leans on it (brain/query.py). A follow-up that
        does not read as leaning ("can we bring the old numbers with us?") but finds nothing
        it could answer from alone is searched again with the previous turn, and the better of
        the two kept: the context was in the turn before."""
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
        earlier = [entry for entry in history if entry.message_id != message.id]
        query = search_text(message.content, earlier)
        passages = await self._search(query, deadline)
        if passages is None or (passages and passages[0].score >= self._config.min_confidence):
            return passages
        joined = with_previous_turn(clean(message.content), earlier)
        if joined is None or joined == query:
            return passages
        retried = await self._search(joined, deadline)
        if retried and (not passages or retried[0].score > passages[0].score):
            return retried
        return passages

    async def _search(self, query: str, deadline: float) -> list[Passage] | None:
        """The knowledge base's passages for `query`, or None past the deadline."""
        search = self._knowledge.search(
            query, k=self._config.max_passages, deadline=deadline if self._warm else None
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
        draft: Draft | None = None,
    ) -> Decision:
        if not message.content:
            return Decision(
                action=Action.ANSWER,
                reason=Reason.EMPTY_MESSAGE,
                explanation="The message had no text or attachment.",
                reply=self._config.messages.empty_message,
            )
        # A change the model proposed waits for this message only, and only the answerer
        # may act on it: a turn that a rule or a procedure decides ends it.
        proposed, conversation.pending_action = conversation.pending_action, None
        earlier = [entry for entry in history if entry.message_id != message.id]
        reading = await self._read_intent(message.content, earlier, searched=passages is not None)
        ruled = self._judge.before_answer(message.content, earlier, reading)
        if self.procedures is not None:
            # A procedure is the business's own way to do what would otherwise be handed
            # over: an account action (by the rules or an intent), or a request an intent
            # reads as a return or out of scope. The operator's other rules (a person asked
            # for, upset, a reserved topic) and an intent for a person or upset win, and end a
            # procedure under way.
            by_rules = self._judge.before_answer(message.content, earlier)
            intent = reading.fired
            if (by_rules is None or by_rules.reason is Reason.ACCOUNT_ACTION) and (
                intent is None or intent.reason in PROCEDURES_TAKE
            ):
                if (procedure := await self.procedures.handle(message, conversation)) is not None:
                    return procedure
            else:
                self.procedures.abandon(conversation)
        if ruled is not None:  # a rule or an intent decided; its failure still counts
            decision = ruled
        elif passages is None:
            decision = escalate(
                Reason.MODEL_UNAVAILABLE,
                f"The knowledge base did not answer within the {self._config.deadline:g} s "
                "deadline.",
                reply=self._config.messages.holding,
                confidence=0.0,
            )
        else:
            conversation.pending_action = proposed
            decision = await self.answer(message, conversation, earlier, passages, draft)
        return self._judge.after_answer(decision, conversation, reading)

    async def _read_intent(
        self, text: str, earlier: list[TranscriptEntry], *, searched: bool
    ) -> Reading:
        """The message's own intent, without the mail around it. A follow-up is searched with
        the turn before it; what it asks for must read the same with that turn too, or it only
        leans: "by when so I'm not charged?" after "can I skip a box?" is no dispute, and
        "can I pause?" after a hand-off that ended is no request for a person."""
        question = clean(text)
        reading = await self._intents.read(question, searched=searched)
        context = search_text(text, earlier)
        if reading.fired is None or context == question:
            return reading
        with_context = await self._intents.read(context, searched=searched)
        if with_context.fired is not None and with_context.fired.label == reading.fired.label:
            return reading
        return Reading(leaning=replace(reading.fired, fired=False))

    @abstractmethod
    async def answer(
        self,
        message: Inbound,
        conversation: Conversation,
        history: list[TranscriptEntry],
        passages: list[Passage],
        draft: Draft | None = None,
    ) -> Decision:
        """The answer, or an escalation, once no rule has decided alone; an answerer that
        writes its reply gradually shows it in `draft` as it goes, and one that acts for the
        customer keeps what waits for their confirmation in `conversation`."""

    async def close(self) -> None:
        """Nothing to release by default."""


def sources_of(passages: list[Passage]) -> tuple[Source, ...]:
    """The distinct sources of `passages`, in order."""
    seen: dict[str, Source] = {}
    for passage in passages:
        seen.setdefault(passage.source, Source(source=passage.source, title=passage.title))
    return tuple(seen.values())
