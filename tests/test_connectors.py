"""The connectors role: `run(..., connectors=True)` starts every enabled channel's long-lived
connection and stops it on SIGTERM; a channel that cannot start is reported and the others run;
the web role never starts a connection."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from structlog.testing import capture_logs

from adapters.discord_channel import DiscordConfig
from adapters.telegram import TelegramConfig
from gateway.app.processes import run
from gateway.app.settings import GatewayConfig
from gateway.config import ServerConfig
from tests.conftest import free_port
from tests.fakes import discord_api, telegram_api, until
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram_api import FakeTelegram, private_message


def config(data_dir: Path, telegram: FakeTelegram, discord: FakeDiscord) -> GatewayConfig:
    return GatewayConfig(
        data_dir=data_dir,
        server=ServerConfig(host="127.0.0.1", port=free_port()),
        channels={
            "telegram": TelegramConfig(
                enabled=True, mode="polling", bot_token=telegram_api.TOKEN, api_url=telegram.url
            ),
            "discord": DiscordConfig(
                enabled=True, bot_token=discord_api.TOKEN, api_url=discord.api_url
            ),
        },
    )


def polls(telegram: FakeTelegram) -> int:
    return sum(1 for call in telegram.calls if call.method == "getUpdates")


async def test_connectors_run_polling_and_survive_a_channel_that_cannot_start(
    sample_data_dir: Path,
) -> None:
    async with FakeTelegram() as telegram, FakeDiscord() as discord:
        discord.refuse_intents = True  # Discord's start fails: close 4014 on IDENTIFY
        with capture_logs() as logs:
            running = asyncio.create_task(
                run(
                    config(sample_data_dir, telegram, discord),
                    http=False,
                    worker=True,
                    connectors=True,
                )
            )
            await telegram.push_update(private_message(1, "How much is the Duo plan in the UK?"))
            # Telegram answers, whatever became of Discord.
            await until(lambda: len(telegram.sent()) == 1, within=20)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(running, 20)
            # stop() ended the polling: no polling task is left to call getUpdates again.
            assert "telegram-polling" not in {task.get_name() for task in asyncio.all_tasks()}
            assert polls(telegram) >= 1

    events = [entry["event"] for entry in logs]
    failed = next(entry for entry in logs if entry["event"] == "connectors.start_failed")
    assert failed["channel"] == "discord"
    assert "Message Content Intent" in failed["error"]
    assert discord_api.TOKEN not in failed["error"]
    started = next(entry for entry in logs if entry["event"] == "gateway.started")
    assert started["connectors"] == ["telegram"]
    assert events.index("telegram.polling_started") < events.index("telegram.polling_stopped")
    assert telegram.webhook_deleted


async def test_web_role_never_starts_connections(sample_data_dir: Path) -> None:
    with capture_logs() as logs:
        async with FakeTelegram() as telegram, FakeDiscord() as discord:
            settings = config(sample_data_dir, telegram, discord)
            running = asyncio.create_task(run(settings, http=True, worker=False))
            health = f"http://127.0.0.1:{settings.server.port}/healthz"
            async with aiohttp.ClientSession() as session:
                for _ in range(400):
                    try:
                        async with session.get(health) as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
            # Connectors would start after the HTTP server, before this line is logged.
            await until(lambda: any(entry["event"] == "gateway.started" for entry in logs))
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(running, 20)

    started = next(entry for entry in logs if entry["event"] == "gateway.started")
    assert started["connectors"] is None
    assert telegram.calls == []
    assert discord.identifies == []
