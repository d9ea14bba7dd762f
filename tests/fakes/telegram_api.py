"""A local fake of the Telegram Bot API (`/bot{token}/{method}`) for a real aiogram `Bot`.

Every call is recorded with its form fields (aiogram posts multipart forms; nested values
arrive as JSON strings). Any method can be scripted to fail once: flood control (429 with
`parameters.retry_after`) or a 400 such as "can't parse entities". `getUpdates` long-polls a
queue of pushed updates, honouring `offset` and `timeout` like the real server.

    async with FakeTelegram() as telegram:
        bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))
        telegram.flood("sendMessage", retry_after=1)
        await bot.send_message(chat_id=42, text="hi")
        assert [call.method for call in telegram.calls] == ["sendMessage", "sendMessage"]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer

TOKEN = "123456789:AAFakeTokenForTests_0123456789abcdef"
BOT_ID = 123456789
BOT_USERNAME = "kettle_support_bot"
SECRET = "webhook-secret_0123"


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when the fake received it


class FakeTelegram(FakeServer):
    """The Bot API on 127.0.0.1:<free port>; use as `async with FakeTelegram() as telegram:`."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.webhook_deleted = False
        self._failures: defaultdict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        self._updates: list[dict[str, Any]] = []
        self._pushed = asyncio.Condition()
        self._message_ids = itertools.count(1000)
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        super().__init__(app)

    def sent(self, method: str = "sendMessage") -> list[dict[str, Any]]:
        """The parameters of every successful call of `method`, in order."""
        return [
            call.params
            for call in self.calls
            if call.method == method and "failed" not in call.params
        ]

    def drafts(self, chat_id: int) -> list[dict[str, Any]]:
        """The sendMessageDraft calls to a chat, in order (each with the draft's text so far)."""
        return [
            params for params in self.sent("sendMessageDraft") if int(params["chat_id"]) == chat_id
        ]

    def flood(self, method: str, *, retry_after: int) -> None:
        """The next call of `method` answers 429 with `parameters.retry_after`."""
        description = f"Too Many Requests: retry after {retry_after}"
        self._fail(method, 429, description, {"retry_after": retry_after})

    def reject(self, method: str, description: str, *, status: int = 400) -> None:
        """The next call of `method` answers `status` with `description`."""
        self._fail(method, status, description, None)

    async def push_update(self, update: dict[str, Any]) -> None:
        """Queue an update for getUpdates."""
        async with self._pushed:
            self._updates.append(update)
            self._pushed.notify_all()

    def _fail(self, method: str, status: int, description: str, parameters: Any) -> None:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        self._failures[method].append((status, body))

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            body = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            return web.json_response(body, status=401)
        method = request.match_info["method"]
        form = await request.post()
        params: dict[str, Any] = {key: _decode(str(value)) for key, value in form.items()}
        if self._failures[method]:
            status, body = self._failures[method].pop(0)
            self.calls.append(Call(method, {**params, "failed": status}, time.monotonic()))
            return web.json_response(body, status=status)
        if method == "sendMessageDraft" and not _valid_draft(params):
            self.calls.append(Call(method, {**params, "failed": 400}, time.monotonic()))
            body = {"ok": False, "error_code": 400, "description": "Bad Request: invalid draft"}
            return web.json_response(body, status=400)
        self.calls.append(Call(method, params, time.monotonic()))
        result = await self._result(method, params)
        return web.json_response({"ok": True, "result": result})

    async def _result(self, method: str, params: dict[str, Any]) -> Any:
        match method:
            case "getMe":
                return {
                    "id": BOT_ID,
                    "is_bot": True,
                    "first_name": "Kettle & Crane",
                    "username": BOT_USERNAME,
                }
            case "deleteWebhook":
                self.webhook_deleted = True
                return True
            case "getUpdates":
                return await self._get_updates(params)
            case "sendMessage":
                chat_id = int(params["chat_id"])
                return {
                    "message_id": next(self._message_ids),
                    "date": int(time.time()),
                    "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
                    "from": {"id": BOT_ID, "is_bot": True, "first_name": "Kettle & Crane"},
                    "text": params["text"],
                }
            case _:
                return True

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0))
        self._updates = [update for update in self._updates if update["update_id"] >= offset]
        async with self._pushed:
            if not self._updates:
                timeout = float(params.get("timeout", 0))
                try:
                    await asyncio.wait_for(self._pushed.wait(), timeout)
                except TimeoutError:
                    return []
        return [update for update in self._updates if update["update_id"] >= offset]


def _valid_draft(params: dict[str, Any]) -> bool:
    """Drafts go to private chats (positive ids), under a non-zero `draft_id`:
    https://core.telegram.org/bots/api#sendmessagedraft"""
    return int(params["chat_id"]) > 0 and int(params.get("draft_id", 0)) != 0


def _decode(value: str) -> Any:
    """aiogram sends nested values (reply_parameters, allowed_updates) as JSON strings."""
    if value[:1] in "[{":
        return json.loads(value)
    return value


def private_message(update_id: int, text: str, *, chat_id: int = 4242, **fields: Any) -> dict:
    """An Update with a private-chat message from a customer, as Telegram sends it."""
    message = {
        "message_id": update_id + 10_000,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private", "first_name": "Ada"},
        "from": {"id": chat_id, "is_bot": False, "first_name": "Ada", "last_name": "Lovelace"},
        **({"text": text} if text else {}),
        **fields,
    }
    return {"update_id": update_id, "message": message}


def group_message(
    update_id: int, text: str, *, chat_id: int = -1001234, user_id: int = 77, **fields: Any
) -> dict:
    """An Update with a message in a supergroup."""
    message = {
        "message_id": update_id + 10_000,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "supergroup", "title": "Kettle & Crane fans"},
        "from": {"id": user_id, "is_bot": False, "first_name": "Grace"},
        "text": text,
        **fields,
    }
    return {"update_id": update_id, "message": message}
