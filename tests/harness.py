"""The whole gateway on a config a test chooses (memory backend), behind a real HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestClient, TestServer

from gateway.app.http import build_app
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from tests.conftest import Gateway


@asynccontextmanager
async def open_gateway(config: GatewayConfig) -> AsyncIterator[Gateway]:
    """The gateway with its embedder loaded, so a first answer is not timed with a cold start."""
    async with Runtime.open(config, embedded=True) as runtime:
        await runtime.knowledge.search("warm up", k=1)
        consumer = asyncio.create_task(runtime.bus.consume(runtime.pipeline.handle))
        try:
            async with TestClient(TestServer(build_app(runtime))) as client:
                yield Gateway(runtime, client)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
