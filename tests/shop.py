"""The demo shop on a loopback port, and the sample config (config/gateway.yaml with its
procedures) pointed at it: the tools make real HTTP calls through the SSRF guard."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from brain.tools import ConnectionConfig
from gateway.app.demo_shop import PREFIX, Shop, seeded_shop
from gateway.app.runtime import Runtime
from gateway.app.settings import DemoConfig, GatewayConfig, load_config
from gateway.config import HandoffConfig
from gateway.pipeline import Pipeline, ReplyTexts
from gateway.relay import Relay
from gateway.results import TurnResults
from tests.fakes.recording import RecordingConsole

SAMPLE_CONFIG = Path(__file__).parent.parent / "config" / "gateway.yaml"
IDENTITY_SECRET = "site-identity-secret"


@dataclass
class RunningShop:
    shop: Shop
    url: str


@asynccontextmanager
async def running_shop() -> AsyncIterator[RunningShop]:
    shop = seeded_shop()
    app = web.Application()
    app.add_subapp(PREFIX, shop.app())  # where `gateway serve` mounts it (demo.shop: true)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield RunningShop(shop, str(server.make_url(PREFIX)))
    finally:
        await server.close()


def shop_config(shop_url: str, data_dir: Path, *, redis_url: str | None = None) -> GatewayConfig:
    """The sample config, its shop connection at `shop_url`, the demo shop not served."""
    config = load_config(SAMPLE_CONFIG)
    connection = ConnectionConfig.model_validate(
        {"base_url": shop_url, "allow_networks": ["127.0.0.1/32"]}
    )
    webchat = config.channels.webchat.model_copy(
        update={"identity_secret": SecretStr(IDENTITY_SECRET)}
    )
    return config.model_copy(
        update={
            "data_dir": data_dir,
            "redis_url": redis_url,
            "demo": DemoConfig(shop=False),
            "connections": {"shop": connection},
            "channels": config.channels.model_copy(update={"webchat": webchat}),
        }
    )


def signed(value: str, secret: str = IDENTITY_SECRET) -> str:
    """What the operator's site computes: the hex HMAC-SHA256 of the email or user id."""
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def pipeline_with_console(runtime: Runtime) -> tuple[Pipeline, RecordingConsole]:
    """The runtime's answerer in a pipeline whose hand-off goes to a recording console, so a
    test reads the agents' card of an escalation."""
    console = RecordingConsole()
    relay = Relay(
        console=console,
        store=runtime.store,
        bus=runtime.bus,
        channels=runtime.channels,
        config=HandoffConfig(escalation_channel="C0AGENTS"),
    )
    pipeline = Pipeline(
        store=runtime.store,
        answerer=runtime.answerer,
        policy=runtime.pipeline._policy,
        channels=runtime.channels,
        results=TurnResults(runtime.bus),
        texts=ReplyTexts(
            error="Broke.", holding="One moment.", no_agents="Email us.", wait="Checking."
        ),
        relay=relay,
        first_response=runtime.config.brain.deadline,
    )
    return pipeline, console
