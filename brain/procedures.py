"""The procedure engine: multi-turn flows for one request (where is my order, start a return).

A procedure starts when a message lands close enough to one of its trigger exemplars, in the
embedding space the knowledge base searches (so it works offline, in every language the
embedder reads), and runs its steps until one needs the customer: a slot to ask for, or a
change to confirm. Its state lives in the conversation (`Conversation.procedure`), which the
pipeline saves after every turn, so whichever worker takes the next message resumes at the
same step. One procedure runs at a time; "never mind" ends it, and so does silence past
`brain.procedures.idle_timeout`.

A tool that changes something runs only after the customer's next message confirms the exact
action the bot described (the arguments are fixed when it asks), and once for that message
however often it is delivered (`brain/ledger.py`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jmespath
import structlog
from pydantic import BaseModel, Field

from brain.confirmation import abandons, confirms
from brain.escalation import escalate
from brain.exemplars import Embed, ExemplarIndex
from brain.ledger import CallLedger
from brain.procedure_config import END, TEMPLATES, ProcedureConfig, ProceduresSettings, Step, Text
from brain.query import clean
from gateway.message import (
    Action,
    Conversation,
    Decision,
    Inbound,
    Reason,
    utcnow,
)

log = structlog.get_logger(__name__)

# The label of counter-examples: a message closest to one of them starts no procedure.
NOT_A_PROCEDURE = ""
MAX_STEPS_PER_TURN = 50  # a goto loop in a procedure ends here instead of spinning
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_INTEGER = re.compile(r"-?\d+")
# A question: a question mark, or an opening question word (English, German).
_QUESTION = re.compile(
    r"\?|^\s*(how|what|when|why|where|which|who|can|could|do|does|is|are|will|would|"
    r"wie|was|wann|warum|wo|welche[rs]?|kann|können|muss|ist|sind)\b",
    re.IGNORECASE,
)


class ProcedureState(BaseModel):
    """One procedure under way, as saved in `Conversation.procedure`."""

    name: str
    language: str
    step: int = 0
    slots: dict[str, Any] = Field(default_factory=dict)
    results: dict[str, Any] = Field(default_factory=dict)
    awaiting: str | None = None  # "slot" or "confirm": the customer's next message answers
    attempts: int = 0  # invalid answers to the current ask
    pending: dict[str, Any] | None = None  # the exact arguments the customer is confirming
    opening: str = ""  # the message that started it: it may already hold a slot's value
    updated_at: datetime = Field(default_factory=utcnow)


class ProcedureEngine:
    def __init__(
        self,
        procedures: Mapping[str, ProcedureConfig],
        settings: ProceduresSettings,
        *,
        ledger: CallLedger,
        embed: Embed,
    ) -> None:
        self._procedures = dict(procedures)
        self._settings = settings
        self._tools = ledger.tools
        self._ledger = ledger
        self._embed = embed
        self._index: ExemplarIndex | None = None
        self._index_lock = asyncio.Lock()
        self._languages: dict[str, str] = {}  # exemplar -> its language

    async def handle(self, message: Inbound, conversation: Conversation) -> Decision | None:
        """The procedure's answer to this message, or None when no procedure applies."""
        state = self._state(conversation)
        if state is None:
            state = await self._triggered(message)
            if state is None:
                return None
            state.opening = message.content
            log.info("procedure.started", procedure=state.name, language=state.language)
        elif abandons(message.content):
            self.abandon(conversation)
            return _answer(state, self._say(self._settings.messages.abandoned, state), "abandoned")
        elif self._side_question(state, message.content):
            # "By when must I skip so I'm not charged?" while it waits for the subscription
            # number: answered like any question; the procedure waits at the same step.
            log.info("procedure.side_question", procedure=state.name, step=state.step)
            return None
        return await self._run(state, message, conversation)

    def _side_question(self, state: ProcedureState, text: str) -> bool:
        """A question that does not give the typed or patterned value the procedure asked for
        (a free-text slot takes any answer)."""
        if state.awaiting != "slot" or not _QUESTION.search(text):
            return False
        step = self._procedures[state.name].steps[state.step]
        typed = step.type in ("integer", "email") or step.pattern is not None
        return typed and _fill(step, text, awaited=True) is None

    def describe(self) -> dict[str, str]:
        """Each procedure's name and what it does, for a model that may start one."""
        return {name: procedure.description for name, procedure in self._procedures.items()}

    async def start(self, name: str, message: Inbound, conversation: Conversation) -> Decision:
        """Start procedure `name` on `message` (a model chose it), in the language of its
        trigger closest to the message; it replaces any other under way."""
        index = await self._trigger_index()
        vector = (await self._embed([clean(message.content)]))[0]
        closest = next((m for m in index.match(vector) if m.label == name), None)
        language = (
            self._languages[closest.exemplar]
            if closest is not None
            else next(iter(self._procedures[name].triggers))
        )
        state = ProcedureState(name=name, language=language, opening=message.content)
        log.info("procedure.started", procedure=name, language=language, by="model")
        return await self._run(state, message, conversation)

    async def _run(
        self, state: ProcedureState, message: Inbound, conversation: Conversation
    ) -> Decision:
        try:
            decision = await self._turn(state, message, conversation)
        except Exception:
            self.abandon(conversation)  # a broken step must not hold the customer in it
            raise
        conversation.procedure = (
            {}
            if state.step < 0
            else state.model_copy(update={"updated_at": utcnow()}).model_dump(mode="json")
        )
        return decision

    def abandon(self, conversation: Conversation) -> None:
        if conversation.procedure:
            log.info("procedure.abandoned", procedure=conversation.procedure.get("name"))
        conversation.procedure = {}

    # --- starting ---------------------------------------------------------------------------

    def _state(self, conversation: Conversation) -> ProcedureState | None:
        if not conversation.procedure:
            return None
        state = ProcedureState.model_validate(conversation.procedure)
        idle = (utcnow() - state.updated_at).total_seconds()
        if state.name not in self._procedures or idle > self._settings.idle_timeout:
            log.info("procedure.expired", procedure=state.name, idle=round(idle))
            conversation.procedure = {}
            return None
        return state

    async def _triggered(self, message: Inbound) -> ProcedureState | None:
        if not message.content:
            return None
        index = await self._trigger_index()
        # The question without the mail around it: the text retrieval and the intents read,
        # whose vector is already computed.
        vector = (await self._embed([clean(message.content)]))[0]
        best = next(iter(index.match(vector)), None)
        if (
            best is None
            or best.label == NOT_A_PROCEDURE
            or best.score < self._settings.min_similarity
        ):
            return None
        return ProcedureState(name=best.label, language=self._languages[best.exemplar])

    async def _trigger_index(self) -> ExemplarIndex:
        """Built on first use: it embeds every exemplar, which needs the embedder loaded."""
        async with self._index_lock:
            if self._index is None:
                exemplars: dict[str, list[str]] = {}
                for name, procedure in self._procedures.items():
                    for language, texts in procedure.triggers.items():
                        exemplars.setdefault(name, []).extend(texts)
                        self._languages.update(dict.fromkeys(texts, language))
                    exemplars.setdefault(NOT_A_PROCEDURE, []).extend(procedure.counter_examples)
                self._index = await ExemplarIndex.build(exemplars, self._embed)
            return self._index

    # --- running ----------------------------------------------------------------------------

    async def _turn(
        self, state: ProcedureState, message: Inbound, conversation: Conversation
    ) -> Decision:
        procedure = self._procedures[state.name]
        replies: list[str] = []
        answered = state.awaiting  # what this message answers, if anything
        state.awaiting = None
        if answered == "confirm":
            pending, state.pending = state.pending, None
            if not confirms(message.content):
                state.step = -1
                return _answer(state, self._say(self._settings.messages.not_confirmed, state))
            step = procedure.steps[state.step]
            outcome = await self._call(step, pending or {}, state, message, conversation)
            if outcome is not None:
                return outcome
        for _ in range(MAX_STEPS_PER_TURN):
            if not 0 <= state.step < len(procedure.steps):
                state.step = -1
                return _answer(state, "\n\n".join(replies), "finished")
            step = procedure.steps[state.step]
            context = _context(state, message)
            if step.reply is not None:
                replies.append(self._say(step.reply, state, context))
                self._advance(state, procedure, step)
            elif step.branch is not None:
                target = next(
                    (
                        b.goto
                        for b in step.branch
                        if b.when is None or jmespath.search(b.when, context)
                    ),
                    None,
                )
                self._advance(state, procedure, step, target)
            elif step.escalate is not None:
                state.step = -1
                text = self._say(step.prompt, state, context) if step.prompt else ""
                return escalate(
                    step.escalate,
                    f"Procedure {state.name} hands over at step {_name(step, procedure)}.",
                    reply="\n\n".join([*replies, text]).strip(),
                    confidence=1.0,
                )
            elif step.ask is not None:
                if step.ask not in state.slots:
                    awaited, answered = answered == "slot", None  # an answer fills one slot
                    value = _fill(step, message.content, awaited=awaited)
                    if value is None:  # the opening request may have said it ("skip ...")
                        value = _fill(step, state.opening, awaited=False)
                    if value is None:
                        if awaited:  # asked, and the answer did not fit
                            state.attempts += 1
                        return self._ask(state, step, replies, context)
                    state.slots[step.ask] = value
                    state.attempts = 0
                self._advance(state, procedure, step)
            else:  # a call
                arguments = {
                    name: found
                    for name, expression in step.arguments.items()
                    if (found := jmespath.search(expression, context)) is not None
                }
                assert step.call is not None
                if self._tools.effect(step.call) == "change":
                    state.pending, state.awaiting = arguments, "confirm"
                    assert step.confirm is not None
                    replies.append(
                        self._say(step.confirm, state, {**context, "arguments": arguments})
                    )
                    return _answer(state, "\n\n".join(replies), "confirm")
                outcome = await self._call(step, arguments, state, message, conversation)
                if outcome is not None:
                    return outcome
        state.step = -1
        return escalate(
            Reason.PIPELINE_ERROR,
            f"Procedure {state.name} ran {MAX_STEPS_PER_TURN} steps in one turn (a goto loop).",
            reply=self._say(self._settings.messages.gave_up, state),
        )

    def _ask(
        self, state: ProcedureState, step: Step, replies: list[str], context: dict[str, Any]
    ) -> Decision:
        if state.attempts >= step.attempts:
            state.step = -1
            return escalate(
                Reason.LOW_CONFIDENCE,
                f"Procedure {state.name}: no valid {step.ask} after {step.attempts} attempts.",
                reply=self._say(self._settings.messages.gave_up, state),
            )
        text = step.retry if state.attempts and step.retry else step.prompt
        assert text is not None
        replies.append(self._say(text, state, context))
        state.awaiting = "slot"
        return _answer(state, "\n\n".join(replies), f"asks for {step.ask}")

    async def _call(
        self,
        step: Step,
        arguments: dict[str, Any],
        state: ProcedureState,
        message: Inbound,
        conversation: Conversation,
    ) -> Decision | None:
        """Call the step's tool and advance; an escalation when it failed."""
        assert step.call is not None
        result = await self._ledger.call(
            step.call,
            arguments,
            message=message,
            conversation=conversation.key,
            scope=f"{state.name}:{state.step}",
        )
        if result.failed:
            state.step = -1
            return escalate(
                Reason.TOOL_FAILED,
                f"Procedure {state.name}: {result.describe()}",
                reply=self._say(self._settings.messages.tool_failed, state),
                confidence=1.0,
            )
        state.results[step.save_as or step.call] = result.as_context()
        self._advance(state, self._procedures[state.name], step)
        return None

    def _advance(
        self, state: ProcedureState, procedure: ProcedureConfig, step: Step, goto: str | None = None
    ) -> None:
        target = goto or step.goto
        if target == END:
            state.step = len(procedure.steps)
        elif target is not None:
            state.step = next(i for i, s in enumerate(procedure.steps) if s.id == target)
        else:
            state.step += 1

    def _say(
        self, text: Text, state: ProcedureState, context: Mapping[str, Any] | None = None
    ) -> str:
        template = (
            text if isinstance(text, str) else text.get(state.language) or next(iter(text.values()))
        )
        return TEMPLATES.from_string(template).render(**(context or {})).strip()


def _context(state: ProcedureState, message: Inbound) -> dict[str, Any]:
    identity = message.identity
    return {
        "slots": state.slots,
        "results": state.results,
        "identity": {identity.kind.value: identity.value} if identity else None,
        "language": state.language,
    }


def _fill(step: Step, text: str, *, awaited: bool) -> Any:
    """The slot's value found in `text`, or None. A free-text slot takes only an answer to its
    own question; a typed or patterned one may come with an earlier message too."""
    if step.type == "integer":
        found = _INTEGER.search(text)
        return int(found.group(0)) if found else None
    if step.type == "email":
        found = _EMAIL.search(text)
        return found.group(0) if found else None
    if step.pattern is not None:
        match = re.search(step.pattern, text, re.IGNORECASE)
        if match is None:
            return None
        if step.value is None:
            return match.group(0)
        groups = [match.group(0), *match.groups()]
        return TEMPLATES.from_string(step.value).render(match=groups).strip()
    return text.strip() if awaited and text.strip() else None


def _name(step: Step, procedure: ProcedureConfig) -> str:
    return step.id or str(procedure.steps.index(step))


def _answer(state: ProcedureState, reply: str, what: str = "") -> Decision:
    return Decision(
        action=Action.ANSWER,
        explanation=f"Procedure {state.name}" + (f": {what}" if what else ""),
        confidence=1.0,
        reply=reply,
    )
