"""The rules of the hand-off, in one table: who owns a conversation, the bot or a person.

    bot ──escalate──> waiting ──claim / agent reply──> human
     ^                   │                               │
     └──── resolve / hand back / timeout ────────────────┘ (timeout only while waiting)

- An agent's thread reply to a waiting conversation claims it: whoever answers owns it.
- A claimed conversation answers a second claim from someone else with "Already claimed by
  Dana"; the owner claiming again changes nothing. Colleagues may still reply in the thread
  (a supervisor stepping in), but ownership stays with the agent who claimed.
- A claim or reply in the thread of a conversation already back with the bot takes it over
  again: that is the follow-up the timeout message promises the customer.
- While the mode is not `bot`, the bot never answers the customer.

The functions here are pure; `gateway/relay.py` does what each transition means (tell the
customer, redraw the card, schedule timers).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.message import Mode


class Event(StrEnum):
    ESCALATE = "escalate"
    CLAIM = "claim"
    AGENT_REPLY = "agent_reply"
    RESOLVE = "resolve"
    HAND_BACK = "hand_back"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class State:
    mode: Mode
    agent_id: str | None = None  # the owning agent's provider id (Slack user id)
    agent: str | None = None  # their display name


class Rejected(Exception):
    """An event the current state does not allow; the message is said to the agent."""


# (mode, event) -> next mode. A missing pair is an illegal event; `_REJECTIONS` says why.
TRANSITIONS: dict[tuple[Mode, Event], Mode] = {
    (Mode.BOT, Event.ESCALATE): Mode.WAITING,
    (Mode.BOT, Event.CLAIM): Mode.HUMAN,
    (Mode.BOT, Event.AGENT_REPLY): Mode.HUMAN,
    (Mode.WAITING, Event.CLAIM): Mode.HUMAN,
    (Mode.WAITING, Event.AGENT_REPLY): Mode.HUMAN,
    (Mode.WAITING, Event.RESOLVE): Mode.BOT,
    (Mode.WAITING, Event.HAND_BACK): Mode.BOT,
    (Mode.WAITING, Event.TIMEOUT): Mode.BOT,
    (Mode.HUMAN, Event.CLAIM): Mode.HUMAN,  # only by the owner: see `transition`
    (Mode.HUMAN, Event.AGENT_REPLY): Mode.HUMAN,
    (Mode.HUMAN, Event.RESOLVE): Mode.BOT,
    (Mode.HUMAN, Event.HAND_BACK): Mode.BOT,
}

_REJECTIONS: dict[tuple[Mode, Event], str] = {
    (Mode.BOT, Event.RESOLVE): "This conversation is already back with the bot.",
    (Mode.BOT, Event.HAND_BACK): "This conversation is already back with the bot.",
    (Mode.BOT, Event.TIMEOUT): "Nobody was waiting any more.",
    (Mode.WAITING, Event.ESCALATE): "This conversation is already waiting for an agent.",
    (Mode.HUMAN, Event.ESCALATE): "An agent already owns this conversation.",
    (Mode.HUMAN, Event.TIMEOUT): "An agent already owns this conversation.",
}


def transition(
    state: State, event: Event, *, agent_id: str | None = None, agent: str | None = None
) -> State:
    """The state after `event` (by the agent `agent_id`/`agent`, for agents' events).

    Raises `Rejected` with the reason to tell the agent when the event is not allowed.
    """
    mode = TRANSITIONS.get((state.mode, event))
    if mode is None:
        raise Rejected(_REJECTIONS[(state.mode, event)])
    if event is Event.CLAIM and state.mode is Mode.HUMAN and state.agent_id != agent_id:
        raise Rejected(f"Already claimed by {state.agent or state.agent_id}.")
    if mode is Mode.BOT or event is Event.ESCALATE:
        return State(mode)
    if state.mode is Mode.HUMAN:
        return state  # the owner stays the owner
    return State(mode, agent_id=agent_id, agent=agent or agent_id)
