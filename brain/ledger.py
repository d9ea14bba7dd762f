"""The calls made on a customer's behalf: each one recorded in their transcript, and an action
(a `change` tool) done at most once per confirming message.

The call is recorded under its scope (the conversation, the confirming message's dedupe key,
and where in the flow it is) before it is made, so a redelivered or reclaimed confirmation
replays the recorded outcome instead of acting again; a call whose outcome was never recorded
(the worker died during it) is sent again only with the same idempotency key, which the API
honours, else it is reported as failed for a person to check. Procedures and the Claude
answerer both call through here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import structlog

from brain.tools import Outcome, ToolBox, ToolResult
from gateway.message import TOOL_AUTHOR, Inbound, Role, ToolCallRecord, TranscriptEntry
from gateway.store import Store

log = structlog.get_logger(__name__)


class CallLedger:
    def __init__(self, tools: ToolBox, store: Store) -> None:
        self.tools = tools
        self._store = store

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        message: Inbound,
        conversation: str,
        scope: str,
    ) -> ToolResult:
        """Call `tool` for the customer of `message`, in conversation `conversation`; `scope`
        tells this call from the others that message may confirm."""
        change = self.tools.effect(tool) == "change"
        record = f"tool:{conversation}:{message.dedupe_key}:{scope}"
        idempotency_key = hashlib.sha256(record.encode()).hexdigest()[:32]
        if change:
            saved = await self._store.saved_response(record)
            if saved is not None:
                done = json.loads(saved)
                if "outcome" in done:  # this confirmation was acted on already
                    log.info("tool.replayed", tool=tool)
                    return ToolResult(**{**done, "outcome": Outcome(done["outcome"])})
                if not self.tools.idempotent(tool):
                    return ToolResult(
                        tool,
                        arguments,
                        Outcome.FAILED,
                        0.0,
                        detail="an earlier attempt was cut off; whether it acted is unknown",
                    )
            await self._store.save_response(record, json.dumps({"started": True}))
        result = await self.tools.call(
            tool, arguments, identity=message.identity, idempotency_key=idempotency_key
        )
        await self._store.append(conversation, transcript_entry(result))
        if change:
            await self._store.save_response(record, json.dumps(asdict(result), default=str))
        return result


def transcript_entry(result: ToolResult) -> TranscriptEntry:
    return TranscriptEntry(
        role=Role.SYSTEM,
        author=TOOL_AUTHOR,
        text=result.describe(),
        tool_call=ToolCallRecord(
            tool=result.tool,
            arguments=result.arguments,
            outcome=result.outcome.value,
            status=result.status,
            latency_ms=result.latency_ms,
        ),
    )
