"""Slack: real slack-bolt and slack_sdk against the local fake Slack Web API, through the gateway.

Inbound requests are POSTed signed, as Slack sends them. Customer-side tests run the whole
pipeline; agent-side tests read what the adapter publishes on the bus.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.signature import SignatureVerifier
from structlog.testing import capture_logs

import adapters.slack as slack_adapter
from adapters.slack import EVENTS_PATH, SlackChannel, SlackConfig, web_client
from adapters.slack_console import SlackConsole, card_blocks, open_console
from gateway.app.settings import GatewayConfig
from gateway.console import AgentThread, EscalationCard
from gateway.message import (
    Conversation,
    Inbound,
    InboundKind,
    Mode,
    Reason,
    Role,
    Source,
    TranscriptEntry,
    conversation_key,
)
from tests.fakes import until
from tests.fakes.slack_api import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    block_action,
    mention,
    message_event,
    new_ts,
    signature,
    signed_event,
    signed_headers,
    signed_interaction,
)
from tests.harness import Gateway

PRICE_QUESTION = "How much is the Duo plan in the UK?"
ESCALATIONS = "C0ESCALATE"
AGENT = "U0AGENT01"
AGENT_NAME = "Ana Ortiz"
CUSTOMER_KEY = conversation_key("webchat", "c0ffee")

# Slack's documented signing example (https://api.slack.com/authentication/verifying-requests-from-slack),
# also used verbatim by python-slack-sdk's tests.
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = 1531420618
DOC_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibI"
    "GlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def slack_config(data_dir: Path, api_url: str, **slack: Any) -> GatewayConfig:
    settings = {
        "enabled": True,
        "bot_token": BOT_TOKEN,
        "signing_secret": SIGNING_SECRET,
        "app_token": APP_TOKEN,
        "api_url": api_url,
        **slack,
    }
    return GatewayConfig(
        data_dir=data_dir, channels={"slack": SlackConfig.model_validate(settings)}
    )


@dataclass(kw_only=True)
class SlackGateway(Gateway):
    slack: FakeSlack
    published: list[Inbound]  # what reached the bus, when the test reads the bus itself

    async def deliver(self, body: str, headers: dict[str, str]) -> int:
        response = await self.http.post(EVENTS_PATH, data=body, headers=headers)
        return response.status

    async def event(self, payload: dict[str, Any], **options: Any) -> int:
        return await self.deliver(*signed_event(SIGNING_SECRET, payload, **options))

    def replies(self, channel: str) -> list[dict[str, Any]]:
        return self.slack.posted(channel)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(users={AGENT: AGENT_NAME}) as fake:
        yield fake


@pytest.fixture
async def gw(
    slack: FakeSlack, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SlackGateway]:
    """The whole gateway (web and worker roles, in-process bus) with Slack in events mode."""
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    async for gateway in _gateway(slack, sample_data_dir, pipeline=True):
        yield gateway


@pytest.fixture
async def edge(slack: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackGateway]:
    """The web role only: what the Slack adapter publishes is recorded, not processed."""
    async for gateway in _gateway(slack, tmp_path, pipeline=False):
        await gateway.runtime.store.save(Conversation(key=CUSTOMER_KEY, channel="webchat"))
        yield gateway


async def _gateway(
    slack: FakeSlack, data_dir: Path, *, pipeline: bool
) -> AsyncIterator[SlackGateway]:
    config = slack_config(data_dir, slack.base_url)
    published: list[Inbound] = []

    async def record(message: Inbound) -> None:
        published.append(message)

    consume = None if pipeline else record
    async with SlackGateway.open(config, consume=consume, slack=slack, published=published) as gw:
        yield gw


# -- signing ---------------------------------------------------------------------------------


def test_documented_signing_example_is_reproduced() -> None:
    assert signature(DOC_SECRET, DOC_TIMESTAMP, DOC_BODY) == DOC_SIGNATURE


async def test_documented_signing_example_is_accepted_by_the_endpoint(
    slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slack's example request passes verification when the clock reads its timestamp; the
    same request with a tampered body does not."""
    import slack_sdk.signature

    monkeypatch.setattr(slack_sdk.signature, "time", lambda: float(DOC_TIMESTAMP))
    config = slack_config(tmp_path, slack.base_url, signing_secret=DOC_SECRET)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(DOC_TIMESTAMP),
        "X-Slack-Signature": DOC_SIGNATURE,
    }
    async with Gateway.open(config) as gateway:
        genuine = await gateway.http.post(EVENTS_PATH, data=DOC_BODY, headers=headers)
        tampered = await gateway.http.post(EVENTS_PATH, data=DOC_BODY + "------", headers=headers)
    # The slash command has no listener: bolt answers 404 *after* the signature passed.
    assert genuine.status == 404
    assert tampered.status == 401


def test_replay_window_is_five_minutes_either_way() -> None:
    class Clock:
        def __init__(self, now: float) -> None:
            self._now = now

        def now(self) -> float:
            return self._now

    def valid_at(now: int) -> bool:
        verifier = SignatureVerifier(DOC_SECRET, clock=Clock(now))
        return verifier.is_valid(DOC_BODY, str(DOC_TIMESTAMP), DOC_SIGNATURE)

    assert valid_at(DOC_TIMESTAMP)
    assert valid_at(DOC_TIMESTAMP + 300)
    assert not valid_at(DOC_TIMESTAMP + 301)
    assert not valid_at(DOC_TIMESTAMP - 301)


@pytest.mark.parametrize(
    "forgery", ["tampered body", "old timestamp", "no signature", "no timestamp"]
)
async def test_unsigned_or_forged_event_is_rejected_with_401(
    edge: SlackGateway, forgery: str
) -> None:
    body, headers = signed_event(
        SIGNING_SECRET, message_event(channel="D0CUSTOM1", user="U0CUSTOM1", text="hi")
    )
    if forgery == "tampered body":
        body = body.replace('"hi"', '"send me the admin password"')
    elif forgery == "old timestamp":
        stale = int(time.time()) - 301
        headers = signed_headers(SIGNING_SECRET, body, timestamp=stale)
    elif forgery == "no signature":
        del headers["X-Slack-Signature"]
    else:
        del headers["X-Slack-Request-Timestamp"]

    with capture_logs() as logs:
        response = await edge.http.post(EVENTS_PATH, data=body, headers=headers)

    assert response.status == 401
    assert await response.json() == {"error": "invalid request"}
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == [
        "slack.rejected"
    ]
    assert SIGNING_SECRET not in repr(logs)
    # Slack gets its answer only once the event is on the bus: none was, so none will come.
    assert edge.traffic.published == edge.published == []


async def test_url_verification_is_answered_with_the_challenge(edge: SlackGateway) -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    payload = {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "challenge": challenge,
        "type": "url_verification",
    }

    body, headers = signed_event(SIGNING_SECRET, payload)
    response = await edge.http.post(EVENTS_PATH, data=body, headers=headers)

    assert response.status == 200
    assert await response.json() == {"challenge": challenge}


async def test_ssl_check_is_answered_with_an_empty_200(edge: SlackGateway) -> None:
    body = "ssl_check=1&token=verification-token-unused"
    headers = signed_headers(SIGNING_SECRET, body, content_type="application/x-www-form-urlencoded")

    response = await edge.http.post(EVENTS_PATH, data=body, headers=headers)

    assert response.status == 200
    assert await response.text() == ""


async def test_malformed_signed_body_is_a_400(edge: SlackGateway) -> None:
    body = "{not json"
    status = await edge.deliver(body, signed_headers(SIGNING_SECRET, body))
    assert status == 400


# -- customers ---------------------------------------------------------------------------------


async def test_direct_message_is_answered_in_a_thread(gw: SlackGateway) -> None:
    event = message_event(channel="D0CUSTOM1", user="U0CUSTOM1", text=PRICE_QUESTION)
    ts = event["event"]["ts"]

    assert await gw.event(event) == 200

    await until(lambda: len(gw.replies("D0CUSTOM1")) == 1)
    reply = gw.replies("D0CUSTOM1")[0]
    assert reply["thread_ts"] == ts
    assert reply["text"]
    assert reply["blocks"] == [{"type": "markdown", "text": reply["text"]}]
    key = conversation_key("slack", TEAM_ID, "D0CUSTOM1")

    async def answer_recorded() -> bool:  # the pipeline records the reply once it is sent
        return len(await gw.runtime.store.transcript(key)) == 2

    await until(answer_recorded)
    transcript = await gw.runtime.store.transcript(key)
    assert [(entry.role, entry.text) for entry in transcript] == [
        (Role.CUSTOMER, PRICE_QUESTION),
        (Role.BOT, reply["text"]),
    ]


async def test_mention_in_a_channel_is_answered_in_its_thread(gw: SlackGateway) -> None:
    event = mention(channel="C0PUBLIC1", user="U0CUSTOM2", text=PRICE_QUESTION)
    ts = event["event"]["ts"]

    assert await gw.event(event) == 200

    await until(lambda: len(gw.replies("C0PUBLIC1")) == 1)
    assert gw.replies("C0PUBLIC1")[0]["thread_ts"] == ts
    transcript = await gw.runtime.store.transcript(
        conversation_key("slack", TEAM_ID, "C0PUBLIC1", ts)
    )
    assert transcript[0].text == PRICE_QUESTION  # the bot's own mention is dropped


async def test_slack_connect_mention_is_keyed_by_the_installed_workspace(
    edge: SlackGateway,
) -> None:
    """In a shared channel, people of other organisations write in the same thread: the key
    uses the workspace the app is installed in (the envelope's), not the sender's team."""
    payload = mention(
        channel="C0SHARED1",
        user="U0PARTNER",
        text="hello from a partner",
        team="T0PARTNER",
        user_team="T0PARTNER",
        source_team="T0PARTNER",
    )
    payload["is_ext_shared_channel"] = True

    assert await edge.event(payload) == 200

    await until(lambda: len(edge.published) == 1)
    message = edge.published[0]
    ts = payload["event"]["ts"]
    assert message.conversation == conversation_key("slack", TEAM_ID, "C0SHARED1", ts)
    assert (message.sender, message.text, message.thread) == (
        "U0PARTNER",
        "hello from a partner",
        ts,
    )


async def test_follow_up_in_the_thread_needs_no_mention_but_channel_chatter_is_ignored(
    gw: SlackGateway,
) -> None:
    first = mention(channel="C0PUBLIC1", user="U0CUSTOM2", text="hello")
    root = first["event"]["ts"]
    assert await gw.event(first) == 200
    await until(lambda: len(gw.replies("C0PUBLIC1")) == 1)

    chatter = message_event(
        channel="C0PUBLIC1", user="U0OTHER01", text="lunch?", channel_type="channel"
    )
    follow_up = message_event(
        channel="C0PUBLIC1",
        user="U0CUSTOM2",
        text=PRICE_QUESTION,
        thread_ts=root,
        channel_type="channel",
    )
    assert await gw.event(chatter) == 200
    assert await gw.event(follow_up) == 200

    await until(lambda: len(gw.replies("C0PUBLIC1")) == 2)
    await gw.traffic.settled()  # the chatter too, had it reached the bus: no third reply
    assert [reply["thread_ts"] for reply in gw.replies("C0PUBLIC1")] == [root, root]


async def test_retried_event_gets_one_reply(gw: SlackGateway) -> None:
    event = message_event(channel="D0CUSTOM3", user="U0CUSTOM3", text=PRICE_QUESTION)

    assert await gw.event(event) == 200
    # Slack's redelivery of the same event: same envelope and message ts, retry headers.
    assert await gw.event(event, retry_num=1) == 200
    assert await gw.event(event, retry_num=2) == 200

    key = conversation_key("slack", TEAM_ID, "D0CUSTOM3")

    async def answered() -> bool:
        return any(entry.role is Role.BOT for entry in await gw.runtime.store.transcript(key))

    await until(answered)
    await gw.traffic.settled()  # the retries too: a second answer would be out by now
    assert len(gw.replies("D0CUSTOM3")) == 1
    transcript = await gw.runtime.store.transcript(key)
    assert [entry.role for entry in transcript] == [Role.CUSTOMER, Role.BOT]


@pytest.mark.parametrize(
    "author",
    [
        {"user": BOT_USER_ID},  # the bot's own message
        {"user": BOT_USER_ID, "bot_id": BOT_ID},
        {"user": None, "bot_id": "B0OTHERBOT", "subtype": "bot_message"},  # another bot
        {"user": "U0OTHER01", "bot_id": "B0OTHERBOT"},  # another app posting as a user
        {"user": "U0CUSTOM4", "subtype": "message_changed"},  # an edit is not a new message
    ],
)
async def test_bot_messages_and_edits_are_ignored(
    edge: SlackGateway, author: dict[str, Any]
) -> None:
    user = author.pop("user")
    event = message_event(channel="D0CUSTOM4", user=user, text="ping", **author)

    assert await edge.event(event) == 200

    # Slack gets its answer only once the event is on the bus: none was, so none will come.
    assert edge.traffic.published == edge.published == []


async def test_rate_limited_reply_is_retried_after_retry_after_and_posted_once(
    gw: SlackGateway,
) -> None:
    gw.slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    started = time.monotonic()

    assert (
        await gw.event(message_event(channel="D0CUSTOM5", user="U0CUSTOM5", text=PRICE_QUESTION))
        == 200
    )

    await until(lambda: len(gw.replies("D0CUSTOM5")) == 1)
    assert time.monotonic() - started >= 1.0
    assert len(gw.slack.calls_to("chat.postMessage")) == 2  # the 429, then the post
    await gw.traffic.settled()
    assert len(gw.replies("D0CUSTOM5")) == 1


async def test_adapter_delivers_a_later_reply_from_the_key_and_thread(edge: SlackGateway) -> None:
    """An agent's reply relayed later carries only the conversation key and reply thread."""
    from gateway.message import Outbound

    adapter = edge.runtime.channels["slack"]
    assert isinstance(adapter, SlackChannel)
    channel_key = conversation_key("slack", TEAM_ID, "C0PUBLIC1", "1700000000.000100")
    await adapter.send(
        Outbound(channel="slack", conversation=channel_key, text="From Ana: hi", role="agent")
    )
    dm_key = conversation_key("slack", TEAM_ID, "D0CUSTOM6")
    await adapter.send(
        Outbound(channel="slack", conversation=dm_key, text="hello", thread="1700000000.000200")
    )

    assert edge.slack.posted("C0PUBLIC1")[0]["thread_ts"] == "1700000000.000100"
    assert edge.slack.posted("D0CUSTOM6")[0]["thread_ts"] == "1700000000.000200"


# -- agents ------------------------------------------------------------------------------------


async def _escalation_thread(edge: SlackGateway) -> str:
    parent = new_ts()
    await edge.runtime.store.link_thread(f"{ESCALATIONS}:{parent}", CUSTOMER_KEY)
    return parent


def _thread_reply(parent: str, text: str, *, user: str = AGENT) -> dict[str, Any]:
    return message_event(
        channel=ESCALATIONS, user=user, text=text, thread_ts=parent, channel_type="channel"
    )


async def test_agent_thread_reply_is_published_for_the_customer_with_the_agent_name(
    edge: SlackGateway,
) -> None:
    parent = await _escalation_thread(edge)
    event = _thread_reply(
        parent, "Hi! I've refunded the order &amp; emailed <https://kc.test/r|the receipt>."
    )

    assert await edge.event(event) == 200

    await until(lambda: len(edge.published) == 1)
    message = edge.published[0]
    assert message.kind is InboundKind.AGENT_REPLY
    assert (message.channel, message.conversation) == ("webchat", CUSTOMER_KEY)
    assert (message.sender, message.author) == (AGENT, AGENT_NAME)
    assert message.text == "Hi! I've refunded the order & emailed the receipt (https://kc.test/r)."
    assert message.provider_message_id == f"slack:{ESCALATIONS}:{event['event']['ts']}"


async def test_agent_display_name_is_looked_up_once(edge: SlackGateway) -> None:
    parent = await _escalation_thread(edge)
    assert await edge.event(_thread_reply(parent, "one")) == 200
    assert await edge.event(_thread_reply(parent, "two")) == 200

    await until(lambda: len(edge.published) == 2)
    assert [message.author for message in edge.published] == [AGENT_NAME, AGENT_NAME]
    assert len(edge.slack.calls_to("users.info")) == 1


@pytest.mark.parametrize("failure", ["text/plain 500", "slower than the timeout"])
async def test_agent_reply_and_button_go_through_when_users_info_fails(
    edge: SlackGateway, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent is named by their user id instead; nothing is lost or answered 500."""
    monkeypatch.setattr(slack_adapter, "NAME_LOOKUP_TIMEOUT", 0.2)
    if failure == "text/plain 500":
        edge.slack.break_next("users.info", times=2)
    else:
        edge.slack.slow("users.info", 1.0)
    parent = await _escalation_thread(edge)
    claim = block_action(
        "handoff_claim", CUSTOMER_KEY, user=AGENT, channel=ESCALATIONS, message_ts=parent
    )

    with capture_logs() as logs:
        assert await edge.event(_thread_reply(parent, "Refunded.")) == 200
        assert await edge.deliver(*signed_interaction(SIGNING_SECRET, claim)) == 200

    await until(lambda: len(edge.published) == 2)
    assert [(event.kind, event.author) for event in edge.published] == [
        (InboundKind.AGENT_REPLY, AGENT),
        (InboundKind.CLAIM, AGENT),
    ]
    assert [entry["event"] for entry in logs if entry["log_level"] != "debug"] == [
        "slack.users_info_failed"
    ] * 2


@pytest.mark.parametrize("text", ["note: customer is a VIP", "NOTE:customer is a VIP"])
async def test_note_prefixed_reply_is_an_internal_note(edge: SlackGateway, text: str) -> None:
    parent = await _escalation_thread(edge)

    assert await edge.event(_thread_reply(parent, text)) == 200

    await until(lambda: len(edge.published) == 1)
    note = edge.published[0]
    assert note.kind is InboundKind.AGENT_NOTE
    assert note.text == "customer is a VIP"
    assert note.conversation == CUSTOMER_KEY


async def test_escalation_channel_outside_a_linked_thread_is_ignored(edge: SlackGateway) -> None:
    parent = await _escalation_thread(edge)
    top_level = message_event(
        channel=ESCALATIONS, user=AGENT, text="anyone?", channel_type="channel"
    )
    other_thread = _thread_reply(new_ts(), "unrelated thread")

    assert await edge.event(top_level) == 200
    assert await edge.event(other_thread) == 200
    assert await edge.event(_thread_reply(parent, "the real one")) == 200

    await until(lambda: len(edge.published) == 1)
    # Each event was on the bus before Slack got its answer: the other two never were.
    assert [message.text for message in edge.traffic.published] == ["the real one"]
    assert [message.text for message in edge.published] == ["the real one"]


@pytest.mark.parametrize(
    ("action_id", "kind"),
    [
        ("handoff_claim", InboundKind.CLAIM),
        ("handoff_resolve", InboundKind.RESOLVE),
        ("handoff_hand_back", InboundKind.HAND_BACK),
    ],
)
async def test_button_press_is_published_as_an_agent_event(
    edge: SlackGateway, action_id: str, kind: InboundKind
) -> None:
    parent = await _escalation_thread(edge)
    payload = block_action(
        action_id, CUSTOMER_KEY, user=AGENT, channel=ESCALATIONS, message_ts=parent
    )

    assert await edge.deliver(*signed_interaction(SIGNING_SECRET, payload)) == 200

    await until(lambda: len(edge.published) == 1)
    event = edge.published[0]
    assert event.kind is kind
    assert (event.channel, event.conversation) == ("webchat", CUSTOMER_KEY)
    assert (event.sender, event.author) == (AGENT, AGENT_NAME)
    action_ts = payload["actions"][0]["action_ts"]
    assert event.provider_message_id == f"slack-action:{action_ts}:{AGENT}"


async def test_button_on_a_card_of_another_conversation_is_ignored(edge: SlackGateway) -> None:
    parent = await _escalation_thread(edge)
    payload = block_action(
        "handoff_claim", "webchat:someone-else", user=AGENT, channel=ESCALATIONS, message_ts=parent
    )

    assert await edge.deliver(*signed_interaction(SIGNING_SECRET, payload)) == 200

    # Slack gets its answer only once the event is on the bus: none was, so none will come.
    assert edge.traffic.published == edge.published == []


async def test_forged_button_press_is_rejected(edge: SlackGateway) -> None:
    parent = await _escalation_thread(edge)
    payload = block_action(
        "handoff_claim", CUSTOMER_KEY, user=AGENT, channel=ESCALATIONS, message_ts=parent
    )

    body, headers = signed_interaction("not-the-secret", payload)
    assert await edge.deliver(body, headers) == 401
    # Slack gets its answer only once the event is on the bus: none was, so none will come.
    assert edge.traffic.published == edge.published == []


# -- the console -------------------------------------------------------------------------------


CARD = EscalationCard(
    conversation=CUSTOMER_KEY,
    customer="Dana <dana@example.com>",
    customer_channel="webchat",
    reason=Reason.HUMAN_REQUESTED,
    explanation="The customer asked for a person.",
    summary="Charged twice for the Duo plan & wants a refund.",
    last_answer="The Duo plan costs £18 a month.",
    sources=(
        Source(source="subscription-plans-and-pricing.md", title="Subscription plans"),
        Source(source="https://help.example.com/refunds", title="Refunds"),
    ),
)


def _buttons(message: dict[str, Any]) -> list[str]:
    return [
        element["action_id"]
        for block in message["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    ]


async def test_console_posts_a_card_with_three_buttons_and_redraws_it_when_claimed(
    slack: FakeSlack,
) -> None:
    console = SlackConsole(web_client(SlackConfig(bot_token=BOT_TOKEN, api_url=slack.base_url)))

    thread = await console.open_thread(CARD, channel=ESCALATIONS)

    card = slack.message(ESCALATIONS, thread.ts)
    assert card is not None and thread == AgentThread(channel=ESCALATIONS, ts=card["ts"])
    assert _buttons(card) == ["handoff_claim", "handoff_resolve", "handoff_hand_back"]
    values = {e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]}
    assert values == {CUSTOMER_KEY}
    shown = json.dumps(card["blocks"], ensure_ascii=False)
    assert "Dana &lt;dana@example.com&gt;" in shown  # user text escaped for mrkdwn
    assert "&amp; wants a refund" in shown
    assert "<https://help.example.com/refunds|Refunds>" in shown
    assert "The Duo plan costs £18 a month." in shown
    assert "Dana" in card["text"]  # notification fallback

    await console.update_card(
        thread, CARD.model_copy(update={"mode": Mode.HUMAN, "agent": AGENT_NAME})
    )

    card = slack.message(ESCALATIONS, thread.ts)
    assert card is not None
    assert _buttons(card) == ["handoff_resolve", "handoff_hand_back"]
    assert f"Claimed by {AGENT_NAME}" in json.dumps(card["blocks"])
    assert f"Claimed by {AGENT_NAME}" in card["text"]


def test_card_of_a_long_conversation_stays_within_block_kit_limits() -> None:
    long = CARD.model_copy(
        update={"customer": "R&D " * 200, "summary": "a & b " * 2000, "last_answer": "<x> " * 3000}
    )

    blocks = card_blocks(long)

    assert len(blocks[0]["text"]["text"]) <= 150  # header
    for field in blocks[1]["fields"]:
        assert len(field["text"]) <= 2000
    sections = [block["text"]["text"] for block in blocks[2:] if block["type"] == "section"]
    assert all(len(text) <= 3000 for text in sections)
    assert all(text.endswith("…") for text in sections[1:3])  # summary, last answer clipped
    assert not any(re.search(r"&[a-z]*…", text) for text in sections)  # no entity cut in two


async def test_console_posts_a_short_transcript_inline_and_a_long_one_as_a_file(
    slack: FakeSlack,
) -> None:
    console = SlackConsole(web_client(SlackConfig(bot_token=BOT_TOKEN, api_url=slack.base_url)))
    thread = await console.open_thread(CARD, channel=ESCALATIONS)
    short = [
        TranscriptEntry(role=Role.CUSTOMER, text="Is 1 < 2?"),
        TranscriptEntry(role=Role.BOT, text="Yes."),
    ]
    long = [
        TranscriptEntry(role=Role.CUSTOMER, text=f"message {n} " + "x" * 300) for n in range(20)
    ]

    await console.post_transcript(thread, short)
    await console.post_transcript(thread, long)

    inline, uploaded = slack.replies(ESCALATIONS, thread.ts)
    assert "Is 1 &lt; 2?" in inline["text"]
    assert inline["text"].index("Customer") < inline["text"].index("Bot")
    assert uploaded["files"][0]["title"] == "Transcript"
    (file,) = slack.files.values()
    assert file["thread_ts"] == thread.ts and file["channel"] == ESCALATIONS
    content = file["content"].decode()
    assert "message 0 " in content and "message 19 " in content


async def test_console_post_mentions_the_user_group_and_escapes_text(slack: FakeSlack) -> None:
    console = SlackConsole(web_client(SlackConfig(bot_token=BOT_TOKEN, api_url=slack.base_url)))
    thread = AgentThread(channel=ESCALATIONS, ts="1700000000.000300")

    await console.post(thread, "Waiting 10 min <unclaimed>", mention="S0AGENTS1")

    (line,) = slack.posted(ESCALATIONS)
    assert line["thread_ts"] == thread.ts
    assert line["text"] == "<!subteam^S0AGENTS1> Waiting 10 min &lt;unclaimed&gt;"


def test_console_needs_a_bot_token(slack: FakeSlack, tmp_path: Path) -> None:
    assert open_console(SlackConfig()) is None
    configured = SlackConfig(bot_token=BOT_TOKEN, api_url=slack.base_url)
    assert isinstance(open_console(configured), SlackConsole)


def test_config_names_the_missing_secret() -> None:
    with pytest.raises(ValueError, match="SLACK_SIGNING_SECRET"):
        SlackConfig(enabled=True, bot_token=BOT_TOKEN, signing_secret=None)
    with pytest.raises(ValueError, match="SLACK_APP_TOKEN"):
        SlackConfig(enabled=True, bot_token=BOT_TOKEN, mode="socket", app_token=None)


# -- Socket Mode -------------------------------------------------------------------------------


async def test_socket_mode_event_is_acked_and_answered_once(
    slack: FakeSlack, sample_data_dir: Path
) -> None:
    config = slack_config(sample_data_dir, slack.base_url, mode="socket", signing_secret=None)
    async with Gateway.open(config) as gateway:
        adapter, traffic = gateway.channel(SlackChannel), gateway.traffic
        assert adapter.routes() == []
        await adapter.start()
        try:
            event = message_event(channel="D0SOCKET1", user="U0CUSTOM7", text=PRICE_QUESTION)
            ack = await slack.push_socket(event)
            assert set(ack) == {"envelope_id"}
            await until(lambda: len(slack.posted("D0SOCKET1")) == 1)
            assert slack.posted("D0SOCKET1")[0]["thread_ts"] == event["event"]["ts"]
            assert slack.calls_to("apps.connections.open")[0].token == APP_TOKEN
            # Socket Mode's redelivery: the same envelope payload, retry_attempt 1.
            assert "envelope_id" in await slack.push_socket(event, retry_attempt=1)
            await traffic.settled()  # acked once on the bus: processed, and deduped
            assert len(slack.posted("D0SOCKET1")) == 1
        finally:
            await adapter.stop()
