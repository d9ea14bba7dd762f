"""The satisfaction ask: once per conversation, after an agent resolved it or after a bot answer
met with silence, never while a person has it; answered 1 to 5 on the channel's own terms.

When to ask:

- *after an agent*: the agent pressed Resolve (`satisfaction.after_agent`); the ask follows the
  "marked as solved" line. A hand-back or a timeout is no resolution, so it asks nothing.
- *after the bot*: a bot answer (not a procedure's question, not an escalation) followed by
  `satisfaction.bot_idle` of silence (`satisfaction.after_bot`). The conversation's durable
  timer (`Store.schedule`, the one the hand-off's reminders use; they never overlap, as the
  hand-off's run only while waiting) holds the moment, each later answer pushes it back, and the
  sweep's TICK asks: once, on whichever worker takes it.

How it is answered (`Channel.ask_rating`): buttons or a signed link publish a RATING event
carrying the ask's id and the score; elsewhere the question says "reply with a number from 1
to 5", and the customer's *next* message, if it is only that digit (`4`, `4/5`, `4.`) and
comes within `satisfaction.reply_window`, is the answer instead of a question ("3 kettles
broke" is a question). The first answer to the ask counts: a second one, a double click or a
stale button is logged and dropped; the archive row's id is the ask's, so even a redelivery
after a crash writes it once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Literal

import structlog

from gateway import metrics
from gateway.archive.recorder import Recorder
from gateway.channel import Channel
from gateway.delivery import deliver, note_failure, record
from gateway.message import (
    Action,
    Conversation,
    Decision,
    Inbound,
    InboundKind,
    Mode,
    Outbound,
    RatingAsk,
    Role,
    TranscriptEntry,
    new_id,
    utcnow,
)
from gateway.store import Store

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier

    from gateway.config import SatisfactionConfig

log = structlog.get_logger(__name__)

Trigger = Literal["agent", "bot"]
# A reply that is only the score: "4", "4/5", "4 / 5", "4.", "4!"
_SCORE_REPLY = re.compile(r"^\s*([1-5])\s*(?:/\s*5)?\s*[.!]?\s*$")
LANGUAGE_SAMPLE = 5  # the customer's latest messages the language is told from


class Satisfaction:
    def __init__(
        self,
        *,
        config: SatisfactionConfig,
        store: Store,
        channels: Mapping[str, Channel],
        archive: Recorder | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._config = config
        self._store = store
        self._channels = channels
        self._archive = archive
        self.clock = clock

    # --- when to ask --------------------------------------------------------------------

    async def after_turn(
        self, conversation: Conversation, decision: Decision, replied: bool
    ) -> None:
        """After a customer's turn: (re)schedule the ask about a bot answer, or drop it."""
        state = conversation.satisfaction
        state.reply_open = False  # this message was not the score: the ask is no more replied to
        if conversation.mode is not Mode.BOT:
            state.due_at = None  # a hand-off began: its timers replaced the ask's
            return
        if not replied or state.ask_id is not None or not self._config.after_bot:
            return
        answered = decision.action is Action.ANSWER and not conversation.procedure
        if answered:
            state.due_at = self.clock() + timedelta(seconds=self._config.bot_idle)
            await self._store.schedule(conversation.key, state.due_at)
        elif state.due_at is not None:
            state.due_at = None
            await self._store.unschedule(conversation.key)

    def owns_tick(self, conversation: Conversation) -> bool:
        """Whether a TICK of this conversation is the ask's (the hand-off has no timer now)."""
        return conversation.mode is Mode.BOT and conversation.satisfaction.due_at is not None

    async def tick(self, conversation: Conversation) -> None:
        due = conversation.satisfaction.due_at
        if due is not None and due > self.clock():  # an earlier timer's tick: wait on
            await self._store.schedule(conversation.key, due)
            return
        await self._ask(conversation, "bot")

    async def after_relay(self, message: Inbound, before: Mode, conversation: Conversation) -> None:
        """After the hand-off relay handled an agent's event or a timer."""
        if conversation.mode is not Mode.BOT:
            return
        if message.kind is InboundKind.RESOLVE and before is not Mode.BOT:
            if self._config.after_agent:
                await self._ask(conversation, "agent")
        elif (due := conversation.satisfaction.due_at) is not None:
            # The relay clears a conversation's timer once it is back with the bot.
            await self._store.schedule(conversation.key, due)

    async def _ask(self, conversation: Conversation, trigger: Trigger) -> None:
        state = conversation.satisfaction
        if state.due_at is not None:
            state.due_at = None
            await self._store.unschedule(conversation.key)
        channel = self._channels.get(conversation.channel)
        if not self._config.enabled or state.ask_id is not None or channel is None:
            return
        messages = self._config.messages
        history = await self._store.transcript(conversation.key)
        language = await told_language(history, list(messages.question))
        ask = RatingAsk(
            id=new_id(),
            reply=Outbound(
                channel=conversation.channel,
                conversation=conversation.key,
                text=messages.question[language],
                thread=conversation.reply_thread,
                extras=conversation.reply_extras,
            ),
            hint=messages.hint[language],
            language=language,
        )
        try:
            await channel.ask_rating(ask)
        except Exception as error:
            await note_failure(self._store, ask.reply, error)
            return
        # The transcript keeps the hint too: what a customer reading it back (REST, the web
        # chat's history, where the buttons are not redrawn) can answer.
        said = f"{ask.reply.text}\n{ask.hint}"
        await record(self._store, ask.reply.model_copy(update={"text": said}))
        state.ask_id, state.asked_at, state.language = ask.id, self.clock(), language
        state.reply_open = True
        metrics.SATISFACTION_ASKS.labels(trigger, conversation.channel).inc()
        log.info("satisfaction.asked", trigger=trigger, language=language)

    # --- answers ------------------------------------------------------------------------

    def replied_score(self, conversation: Conversation, message: Inbound) -> int | None:
        """The score, when this customer message answers the open ask by its text alone."""
        state = conversation.satisfaction
        if not state.reply_open or state.asked_at is None or conversation.mode is not Mode.BOT:
            return None
        if message.received_at - state.asked_at > timedelta(seconds=self._config.reply_window):
            return None
        found = _SCORE_REPLY.match(message.text) if not message.attachments else None
        return int(found.group(1)) if found else None

    async def answer(
        self, conversation: Conversation, message: Inbound, *, ask: str, score: int
    ) -> tuple[str, ...]:
        """Record the answer to `ask`, once; the thanks said (or for a page to show)."""
        state = conversation.satisfaction
        if state.ask_id is None or ask != state.ask_id:
            log.info("satisfaction.unknown_ask")  # a forged or stale button
            return ()
        state.reply_open = False
        if state.score is not None:
            log.info("satisfaction.already_answered", score=state.score)
            return ()
        state.score = score
        if self._archive is not None:
            await self._archive.rated(message, conversation, ask=ask, score=score)
        else:
            metrics.SATISFACTION.labels(str(score), conversation.channel).inc()
        log.info("satisfaction.answered", score=score)
        thanks = self._config.messages.thanks[
            state.language or next(iter(self._config.messages.thanks))
        ]
        channel = self._channels.get(conversation.channel)
        by_page = channel is not None and channel.capabilities.rating_page
        if message.kind is InboundKind.CUSTOMER or not by_page:
            reply = Outbound(
                channel=conversation.channel,
                conversation=conversation.key,
                text=thanks,
                in_reply_to=message.id,
                thread=conversation.reply_thread,
                extras=conversation.reply_extras,
            )
            await deliver(channel, self._store, reply)
        return (thanks,)


async def told_language(history: Sequence[TranscriptEntry], languages: list[str]) -> str:
    """The language of the customer's latest messages, among `languages`; the first one when
    they tell nothing (a "hi" scores no language above another)."""
    said = [entry.text for entry in history if entry.role is Role.CUSTOMER]
    text = "\n".join(said[-LANGUAGE_SAMPLE:])
    if len(languages) == 1 or not text.strip():
        return languages[0]
    identifier = await asyncio.to_thread(_identifier, tuple(languages))  # loads once, ~0.6 s
    if identifier is None:
        return languages[0]
    ranked = identifier.rank(text)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return languages[0]
    return str(ranked[0][0])


@cache
def _identifier(languages: tuple[str, ...]) -> LanguageIdentifier | None:
    """py3langid's model narrowed to `languages`; None when it knows fewer than two of them
    (a code such as "en-GB" is not one of its ISO 639-1 codes)."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_DIR / MODEL_FILE)
    known = [language for language in languages if language in identifier.nb_classes]
    if len(known) < 2:
        return None
    identifier.set_languages(known)
    return identifier
