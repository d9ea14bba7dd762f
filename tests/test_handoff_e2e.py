"""The hand-off end to end: a REST customer, agents in Slack (real slack-bolt and slack_sdk
against the local fake Slack Web API), every Slack request signed as Slack signs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.slack import EVENTS_PATH
from gateway.message import Mode, conversation_key
from tests.fakes.slack_api import (
    SIGNING_SECRET,
    FakeSlack,
    block_action,
    message_event,
    signed_event,
    signed_interaction,
)
from tests.test_handoff import (
    DANA,
    DANA_NAME,
    ESCALATIONS,
    Handoff,
    backend,
    handoff_config,
    open_handoff,
    until,
)


@pytest.fixture(params=["memory", "redis"])
async def backend_url(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str | None:
    return await backend(request, monkeypatch)


async def transcript(gw: Handoff, conversation_id: str) -> dict[str, Any]:
    response = await gw.http.get(f"/api/conversations/{conversation_id}")
    assert response.status == 200
    return await response.json()


async def signed_post(gw: Handoff, body: str, headers: dict[str, str]) -> None:
    response = await gw.http.post(EVENTS_PATH, data=body, headers=headers)
    assert response.status == 200, await response.text()


async def test_a_customer_is_handed_to_an_agent_in_slack_and_back_to_the_bot(
    backend_url: str | None, sample_data_dir: Path
) -> None:
    async with FakeSlack(users={DANA: DANA_NAME}) as slack:
        config = handoff_config(sample_data_dir, slack, backend_url)
        async with open_handoff(config, slack, timers=True) as gw:
            # 1. The customer asks for a person: told at once that one is coming.
            answer = await gw.ask("kim", "Can I talk to a human please?")
            assert answer["decision"]["action"] == "escalate"
            assert "A person from our team will join you here" in answer["replies"][0]["text"]

            # 2. The card and the transcript appear in the escalation channel.
            card = gw.card()
            assert "needs a person" in card["text"] and "Waiting for an agent" in card["text"]
            assert "Can I talk to a human please?" in gw.thread()[0]

            # 3. An agent's signed thread reply reaches the customer, signed with her name.
            reply = message_event(
                channel=ESCALATIONS,
                user=DANA,
                text="Hi Kim, I'm Dana. What can I do for you?",
                thread_ts=card["ts"],
                channel_type="channel",
            )
            await signed_post(gw, *signed_event(SIGNING_SECRET, reply))
            expected = "Dana: Hi Kim, I'm Dana. What can I do for you?"
            await until(lambda: _said(gw, "kim", expected))
            state = await transcript(gw, "kim")
            assert state["mode"] == "human"
            assert state["transcript"][-1]["role"] == "agent"
            assert state["transcript"][-1]["author"] == DANA_NAME
            assert "Claimed by Dana" in gw.card()["text"]

            # 4. The customer's next message appears in the thread; the bot stays silent.
            follow_up = await gw.ask("kim", "My grinder arrived broken, order 4417.")
            assert follow_up["decision"]["action"] == "human" and follow_up["replies"] == []
            await until(lambda: "kim: My grinder arrived broken, order 4417." in gw.thread())

            # 5. A signed Resolve press hands it back; the bot answers again.
            resolve = block_action(
                "handoff_resolve",
                conversation_key("rest", "kim"),
                user=DANA,
                channel=ESCALATIONS,
                message_ts=card["ts"],
            )
            await signed_post(gw, *signed_interaction(SIGNING_SECRET, resolve))
            await until(lambda: _mode_is(gw, "kim", Mode.BOT))
            assert "Back with the bot" in gw.card()["text"]
            answer = await gw.ask("kim", "Can I pause my subscription?")
            assert answer["decision"]["action"] == "answer" and answer["replies"]
            roles = [entry["role"] for entry in (await transcript(gw, "kim"))["transcript"]]
            assert roles[-2:] == ["customer", "bot"]


async def _said(gw: Handoff, conversation_id: str, text: str) -> bool:
    entries = (await transcript(gw, conversation_id))["transcript"]
    return any(entry["text"] == text for entry in entries)


async def _mode_is(gw: Handoff, conversation_id: str, mode: Mode) -> bool:
    return (await transcript(gw, conversation_id))["mode"] == mode.value
