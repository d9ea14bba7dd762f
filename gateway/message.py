"""The one message model: every channel's payload becomes an `Inbound`, every reply an `Outbound`.

Nothing past an adapter knows a provider's payload shape; provider-only details travel in
`extras` and are read back only by the adapter that wrote them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SURROGATE = re.compile("[\ud800-\udfff]")


def new_id() -> str:
    """128 random bits as hex, like uuid4().hex without building a UUID object."""
    return os.urandom(16).hex()


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """The key that isolates one customer's conversation: channel plus provider-scoped ids.

    Every part is provider-assigned (a chat id, a phone number, a thread id), so two
    customers never share a key, and the same customer on two channels has two keys.
    Written `channel:part:part...`; only the last part may itself hold a colon.
    """

    channel: str
    scope: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.scope or any(not part for part in self.scope):
            raise ValueError(f"conversation key for {self.channel!r} needs non-empty scope parts")

    def __str__(self) -> str:
        return ":".join((self.channel, *self.scope))

    @classmethod
    def parse(cls, key: str, *, parts: int | None = None) -> ConversationKey:
        """Read a key back; `parts` scope parts at most, the last one taking the rest."""
        channel, *scope = key.split(":", -1 if parts is None else parts)
        return cls(channel, tuple(scope))


def conversation_key(channel: str, *scope: str) -> str:
    return str(ConversationKey(channel, scope))


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Attachment(Model):
    kind: str  # image, document, audio, video, sticker, location, other
    name: str | None = None
    url: str | None = None
    mime_type: str | None = None
    size: int | None = None

    def describe(self) -> str:
        """A text note for the brain and the transcript (attachments are never downloaded)."""
        label = self.name or self.mime_type or "file"
        return f"[{self.kind} attached: {label}]"


class InboundKind(StrEnum):
    """What an inbound event is. Agents' events travel the bus under the customer's
    conversation key, so they are ordered with the customer's messages, on any worker."""

    CUSTOMER = "customer"  # a customer's message
    AGENT_REPLY = "agent_reply"  # an agent's thread reply, for the customer
    AGENT_NOTE = "agent_note"  # an agent's internal note; never reaches the customer
    CLAIM = "claim"
    RESOLVE = "resolve"
    HAND_BACK = "hand_back"
    TICK = "tick"  # a hand-off timer fell due (reminder, unclaimed ping, timeout)
    DELIVERY = "delivery"  # a channel reported after the fact that a reply was not delivered
    RATING = "rating"  # the customer pressed a satisfaction button or link (`Inbound.rating`)


class IdentityKind(StrEnum):
    EMAIL = "email"  # the email channel's sender, or an address the web chat's site signed
    PHONE = "phone"  # SMS / WhatsApp: the number Twilio delivered from (E.164)
    USER = "user"  # a provider account (Slack, Telegram, Discord) or the site's signed user id


class Identity(Model):
    """Who the channel verified the sender to be: never what the message text claims.

    Tools that act on the customer's account get this value injected by the gateway.
    """

    kind: IdentityKind
    value: str = Field(min_length=1)


SCORES = range(1, 6)  # satisfaction is rated 1 (poor) to 5 (great) on every channel


class Rating(Model):
    """A satisfaction answer given by a button or a link: which ask it answers, and the score."""

    ask: str = Field(min_length=1, max_length=64)  # `SatisfactionState.ask_id`
    score: int = Field(ge=SCORES.start, lt=SCORES.stop)

    @property
    def token(self) -> str:
        """`rate:<ask>:<score>`: what a button carries back (Telegram's callback data, at most
        64 bytes; Discord's custom id)."""
        return f"rate:{self.ask}:{self.score}"

    @classmethod
    def from_token(cls, token: str) -> Rating | None:
        """The rating a button's `token` gives; None for anything else."""
        kind, _, rest = token.partition(":")
        ask, _, score = rest.partition(":")
        if kind != "rate" or not score.isdigit():
            return None
        try:
            return cls(ask=ask, score=int(score))
        except ValueError:
            return None

    def event(self, channel: str, conversation: str, sender: str) -> Inbound:
        """The RATING event a press or a click publishes: keyed on the ask, so a double click
        or a second answer is a duplicate the pipeline drops."""
        return Inbound(
            kind=InboundKind.RATING,
            channel=channel,
            conversation=conversation,
            sender=sender,
            provider_message_id=f"rating:{self.ask}",
            rating=self,
        )


class Inbound(Model):
    """A customer's message or an agent's event, normalized.

    `channel` and `conversation` are always the customer's, whoever sent the event.
    """

    id: str = Field(default_factory=new_id)
    kind: InboundKind = InboundKind.CUSTOMER
    channel: str
    conversation: str
    sender: str
    author: str | None = None  # an agent's display name
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    provider_message_id: str
    received_at: datetime = Field(default_factory=utcnow)
    thread: str | None = None  # provider thread / reply-to context, when the channel has one
    extras: dict[str, Any] = Field(default_factory=dict)  # provider details, for its adapter only
    identity: Identity | None = None  # what the channel verified; None: nothing was
    rating: Rating | None = None  # RATING events

    @field_validator("text", "sender", "author")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        """A lone surrogate (JSON's "\\ud800" decodes to one) encodes to nothing: the
        embedder, Redis and every provider would fail on it. Each becomes U+FFFD."""
        if value is None or value.isascii():
            return value
        return _SURROGATE.sub("\ufffd", value)

    @property
    def dedupe_key(self) -> str:
        return f"{self.channel}:{self.provider_message_id}"

    @property
    def content(self) -> str:
        """What the brain and transcript see: the text plus a note per attachment."""
        notes = [attachment.describe() for attachment in self.attachments]
        return "\n".join(part for part in (self.text.strip(), *notes) if part)


class Source(Model):
    source: str
    title: str


class Action(StrEnum):
    ANSWER = "answer"
    ESCALATE = "escalate"
    HUMAN = "human"  # a person owns the conversation; the bot stays silent


class Reason(StrEnum):
    HUMAN_REQUESTED = "human_requested"
    LOW_CONFIDENCE = "low_confidence"
    NEGATIVE_SENTIMENT = "negative_sentiment"
    POLICY_RESTRICTED = "policy_restricted"  # a topic the operator reserves for people
    ACCOUNT_ACTION = "account_action"  # something to do on the account the bot cannot do
    REPEATED_FAILURE = "repeated_failure"
    MODEL_UNAVAILABLE = "model_unavailable"
    EMPTY_MESSAGE = "empty_message"
    HUMAN_ACTIVE = "human_active"
    PIPELINE_ERROR = "pipeline_error"
    TOOL_FAILED = "tool_failed"  # a call to the business's API failed, timed out or was refused


# Turns in which the bot failed the customer.
_FAILURES = frozenset(
    {
        Reason.LOW_CONFIDENCE,
        Reason.MODEL_UNAVAILABLE,
        Reason.REPEATED_FAILURE,
        Reason.PIPELINE_ERROR,
    }
)


class Decision(Model):
    action: Action
    reason: Reason | None = None
    explanation: str = ""
    confidence: float = 0.0
    sources: tuple[Source, ...] = ()
    reply: str = ""  # what the bot says to the customer; empty when it stays silent

    @property
    def is_failed_turn(self) -> bool:
        """The one definition of a failed turn (asking for a person is not one): the pipeline
        counts them in a row, and the judge escalates the Nth as `repeated_failure`."""
        return self.action is Action.ESCALATE and self.reason in _FAILURES


class Role(StrEnum):
    CUSTOMER = "customer"
    BOT = "bot"
    AGENT = "agent"
    SYSTEM = "system"


# The author of the system entries that record a call to the business's API (brain/tools.py).
TOOL_AUTHOR = "tool"


class Outbound(Model):
    """A reply on its way to a customer."""

    channel: str
    conversation: str
    text: str
    in_reply_to: str | None = None  # Inbound.id
    thread: str | None = None
    author: str | None = None  # agent display name; None for the bot
    role: Role = Role.BOT
    sources: tuple[Source, ...] = ()
    extras: dict[str, Any] = Field(default_factory=dict)


class RatingAsk(Model):
    """A satisfaction ask on its way to the customer (`Channel.ask_rating`): the question,
    addressed like a reply (`reply`, whose text is the question), and how to answer it where
    the channel has no buttons (`hint`: "reply with a number from 1 to 5")."""

    id: str  # what the buttons and links carry back (`Rating.ask`)
    reply: Outbound
    hint: str
    language: str


class Mode(StrEnum):
    BOT = "bot"
    WAITING = "waiting"
    HUMAN = "human"


class ToolCallRecord(Model):
    """One call to the business's API as the transcript keeps it (brain/tools.py): what
    `gateway test` checks a turn called, and what the archive counts."""

    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    outcome: str  # brain.tools.Outcome
    status: int | None = None
    latency_ms: float = 0.0


class TranscriptEntry(Model):
    role: Role
    text: str
    at: datetime = Field(default_factory=utcnow)
    message_id: str | None = None  # the customer's Inbound.id
    in_reply_to: str | None = None  # for replies: the Inbound.id answered
    author: str | None = None
    sources: tuple[Source, ...] = ()
    # A holding line ("One moment...") said while the answer to `in_reply_to` was still being
    # worked out: the turn's first part, its answer follows in its own entry.
    holding: bool = False
    # For the bot's answers: milliseconds from the customer's message to the first text they
    # saw of this turn (a holding line, a first streamed sentence), and to the complete answer.
    first_response_ms: float | None = None
    latency_ms: float | None = None
    # For the system entries of TOOL_AUTHOR: the call, structured (`text` describes it).
    tool_call: ToolCallRecord | None = None


class PendingAction(Model):
    """A change to the customer's account the model asked for: done, exactly as recorded here,
    only if the customer's next message confirms it."""

    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    asked_at: datetime = Field(default_factory=utcnow)


def turn_calls(transcript: Sequence[TranscriptEntry], message_id: str) -> list[ToolCallRecord]:
    """The calls made for one customer message (`Inbound.id`), in order: the tool entries
    after its own entry, up to the next customer message. A conversation's messages are
    processed one at a time, so nothing else writes between them; [] when its entry is not
    in `transcript`."""
    calls: list[ToolCallRecord] = []
    mine = False
    for entry in transcript:
        if entry.role is Role.CUSTOMER:
            if mine:
                break
            mine = entry.message_id == message_id
        elif mine and entry.tool_call is not None:
            calls.append(entry.tool_call)
    return calls


class SatisfactionState(BaseModel):
    """The satisfaction ask of a conversation (gateway/satisfaction.py): at most one."""

    model_config = ConfigDict(extra="forbid")

    due_at: datetime | None = None  # an ask after a bot answer, scheduled (store.schedule)
    ask_id: str | None = None  # the ask sent; None: not asked yet
    asked_at: datetime | None = None
    language: str | None = None  # the language it was asked in
    reply_open: bool = False  # the customer's next message may be the score ("4")
    score: int | None = None  # the answer; the first one counts


class Conversation(BaseModel):
    """Mutable state of one conversation; the transcript is stored beside it, append-only."""

    model_config = ConfigDict(extra="forbid")

    key: str
    channel: str
    mode: Mode = Mode.BOT
    customer: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    failed_turns: int = 0
    # Where the customer's latest message came from (its `thread` and provider `extras`), so a
    # reply sent later, by an agent, is addressed and threaded like a direct answer.
    reply_thread: str | None = None
    reply_extras: dict[str, Any] = Field(default_factory=dict)
    # The hand-off (gateway/handoff.py, gateway/relay.py): who owns it, where agents see it.
    agent_id: str | None = None  # the owning agent's provider id
    agent: str | None = None  # their display name
    agent_thread_channel: str | None = None  # the console thread (AgentThread.channel, .ts)
    agent_thread_ts: str | None = None
    card: dict[str, Any] = Field(default_factory=dict)  # the EscalationCard, to redraw it
    escalated_at: datetime | None = None
    claimed_at: datetime | None = None
    next_timer: datetime | None = None  # when the relay is due next (store.schedule)
    reminders_sent: int = 0
    pinged: bool = False  # the escalation channel was pinged about this unclaimed wait
    # The procedure under way (brain/procedures.py's state), so any worker resumes its step.
    procedure: dict[str, Any] = Field(default_factory=dict)
    # An action the model asked to take, waiting for the customer's confirmation (brain/claude.py).
    pending_action: PendingAction | None = None
    satisfaction: SatisfactionState = Field(default_factory=SatisfactionState)


class TurnResult(Model):
    """What one processed message produced; request/response channels answer with it."""

    message_id: str
    conversation: str
    replies: tuple[str, ...]
    decision: Decision
    latency_ms: float  # receipt to the complete answer
    first_response_ms: float | None = None  # receipt to the first text shown; None: nothing
    duplicate: bool = False
