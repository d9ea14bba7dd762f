"""Local fakes of the providers' servers, and helpers for the tests that drive them."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.message import Conversation, Outbound
from gateway.store import Store


class FakeServer:
    """An aiohttp app on 127.0.0.1:<free port>, started and stopped by `async with`."""

    def __init__(self, app: web.Application) -> None:
        self._server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> Self:
        await self._server.start_server()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._server.close()

    @property
    def url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until `condition()` (plain or awaitable) holds; fail the test after `within` s."""
    deadline = time.monotonic() + within
    while not await _holds(condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:g} s")
        await asyncio.sleep(0.02)


async def _holds(outcome: bool | Awaitable[bool]) -> bool:
    return await outcome if inspect.isawaitable(outcome) else outcome


async def stored_conversation(store: Store, key: str, within: float = 10.0) -> Conversation:
    """The conversation once its turn has saved it: a turn sends its reply before it saves."""
    deadline = time.monotonic() + within
    while (conversation := await store.load(key)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} not saved within {within:g} s")
        await asyncio.sleep(0.02)
    return conversation


def agent_reply(conversation: Conversation, text: str, *, agent: str = "Dana") -> Outbound:
    """An agent's reply as the hand-off relay sends it later: addressed from the stored
    conversation alone (its `reply_thread` and `reply_extras`), signature already in the text."""
    return Outbound(
        channel=conversation.channel,
        conversation=conversation.key,
        text=f"{agent}: {text}",
        role="agent",
        author=agent,
        thread=conversation.reply_thread,
        extras=conversation.reply_extras,
    )
