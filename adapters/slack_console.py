"""The agents' console in Slack: `gateway.console.AgentConsole` on a Slack channel.

Each escalation opens a thread whose parent is a Block Kit card (who, where, why, what the bot
knew and said, with Claim / Resolve / Hand back buttons); the transcript and every later line
go in the thread. Agents' replies and button presses come back through the Slack channel
(`adapters/slack.py`), which needs only the bot token for this side, so the console works even
when Slack is not a customer channel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackConfig, web_client
from gateway.console import AgentThread, EscalationCard
from gateway.message import Mode, Role, TranscriptEntry

# Transcripts longer than this go to the thread as a file: a section block holds 3,000
# characters (https://docs.slack.dev/reference/block-kit/blocks/section-block) and a message
# over ~4,000 is hard to read, so a long one is better downloaded than scrolled.
TRANSCRIPT_INLINE_CHARS = 3_500
SECTION_CHARS = 2_900  # of escaped text in a section (3,000 at most), leaving room for a title
FIELD_CHARS = 300  # of escaped text in a section field (2,000 at most): a name, not an essay


def open_console(slack: SlackConfig) -> SlackConsole | None:
    """The agents' console on the configured Slack workspace; None when no bot token is set."""
    return SlackConsole(web_client(slack)) if slack.bot_token else None


class SlackConsole:
    """`gateway.console.AgentConsole` in a Slack channel: a Block Kit card per escalation,
    the transcript and every later line in the card's thread."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def open_thread(self, card: EscalationCard, *, channel: str) -> AgentThread:
        response = await self.client.chat_postMessage(
            channel=channel, text=_card_fallback(card), blocks=card_blocks(card)
        )
        return AgentThread(channel=response["channel"], ts=response["ts"])

    async def update_card(self, thread: AgentThread, card: EscalationCard) -> None:
        await self.client.chat_update(
            channel=thread.channel,
            ts=thread.ts,
            text=_card_fallback(card),
            blocks=card_blocks(card),
        )

    async def post_transcript(
        self, thread: AgentThread, entries: Sequence[TranscriptEntry]
    ) -> None:
        inline = "\n\n".join(_transcript_line(entry) for entry in entries)
        if len(inline) <= TRANSCRIPT_INLINE_CHARS:
            await self.client.chat_postMessage(
                channel=thread.channel,
                thread_ts=thread.ts,
                text=inline or "_The transcript is empty._",
                unfurl_links=False,
            )
            return
        document = "\n\n".join(
            f"[{entry.at:%Y-%m-%d %H:%M:%S} UTC] {_speaker(entry)}: {entry.text}"
            for entry in entries
        )
        await self.client.files_upload_v2(
            channel=thread.channel,
            thread_ts=thread.ts,
            content=document,
            filename="transcript.txt",
            title="Transcript",
            initial_comment=f"The full transcript ({len(entries)} messages) is in this file.",
        )

    async def post(self, thread: AgentThread, text: str, *, mention: str | None = None) -> None:
        """`text` is plain text (escaped here); `mention` is a user-group id (S0...)."""
        line = escape(text)
        if mention:
            # https://docs.slack.dev/messaging/formatting-message-text#mentioning-groups
            line = f"<!subteam^{mention}> {line}"
        await self.client.chat_postMessage(
            channel=thread.channel, thread_ts=thread.ts, text=line, unfurl_links=False
        )


def escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn reserves (for user-supplied text)."""
    # https://docs.slack.dev/messaging/formatting-message-text#escaping
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def card_blocks(card: EscalationCard) -> list[dict[str, Any]]:
    """The escalation card: who, where, why, what the bot knew and said, and the buttons."""
    fields = {
        "Customer": card.customer,
        "Channel": card.customer_channel,
        "Reason": _reason(card),
        "Status": _status(card),
    }
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(f"{card.customer} needs a person", 150)},
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{_escaped(value, FIELD_CHARS)}"}
                for name, value in fields.items()
            ],
        },
    ]
    for title, text in (
        ("Why", card.explanation),
        ("Summary", card.summary),
        ("The bot's last answer", card.last_answer),
    ):
        if text:
            blocks.append(_section(f"*{title}*\n{_escaped(text, SECTION_CHARS)}"))
    if card.sources:
        passages = "\n".join(
            f"• {_source_link(source.title, source.source)}" for source in card.sources
        )
        blocks.append(_section(f"*Passages the bot used*\n{passages}"))
    if card.tool_calls:
        calls = "\n".join(f"• {call}" for call in card.tool_calls)
        blocks.append(_section(f"*Tool calls*\n{_escaped(calls, SECTION_CHARS)}"))
    buttons = []
    if card.mode is Mode.WAITING:
        buttons.append(_button("Claim", "handoff_claim", card.conversation, style="primary"))
    if card.mode is not Mode.BOT:
        buttons.append(_button("Resolve", "handoff_resolve", card.conversation))
        buttons.append(_button("Hand back to bot", "handoff_hand_back", card.conversation))
    if buttons:
        blocks.append({"type": "actions", "block_id": "handoff_actions", "elements": buttons})
    return blocks


def _reason(card: EscalationCard) -> str:
    return card.reason.value.replace("_", " ") if card.reason else "escalated"


def _status(card: EscalationCard) -> str:
    if card.mode is Mode.HUMAN:
        return f"Claimed by {card.agent or 'an agent'}"
    if card.mode is Mode.WAITING:
        return "Waiting for an agent"
    return "Back with the bot"


def _card_fallback(card: EscalationCard) -> str:
    """The notification text of the card (every Block Kit message needs one)."""
    return escape(
        f"{card.customer} on {card.customer_channel} needs a person "
        f"({_reason(card)}): {_status(card)}"
    )


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def _button(
    label: str, action_id: str, conversation: str, *, style: str | None = None
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": conversation,
    }
    if style:
        button["style"] = style
    return button


def _source_link(title: str, source: str) -> str:
    if source.startswith(("http://", "https://")):
        return f"<{source}|{escape(title)}>"
    return f"{escape(title)} ({escape(source)})"


def _speaker(entry: TranscriptEntry) -> str:
    if entry.role is Role.AGENT and entry.author:
        return entry.author
    return entry.role.value.capitalize()


def _transcript_line(entry: TranscriptEntry) -> str:
    return f"*{escape(_speaker(entry))}* · {entry.at:%H:%M} UTC\n{escape(entry.text)}"


def _escaped(text: str, limit: int) -> str:
    """User text escaped for mrkdwn and clipped to `limit`, never inside an `&amp;` entity."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    return re.sub(r"&[a-z]*$", "", escaped[: limit - 1]) + "…"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
