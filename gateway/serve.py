"""Running the process types: `web` (HTTP), `worker` (pipeline consumers), or both in one."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.runtime import Runtime
from gateway.server import build_app

log = structlog.get_logger(__name__)


async def run(config: GatewayConfig, *, http: bool, worker: bool, ingest: bool = False) -> None:
    """Run until SIGINT/SIGTERM, then stop taking work and shut down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with Runtime.open(config) as runtime:
        if ingest:
            await runtime.ingest_if_stale()
        consumer = (
            asyncio.create_task(runtime.bus.consume(runtime.pipeline.handle)) if worker else None
        )
        runner = None
        if http:
            runner = web.AppRunner(build_app(runtime), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, config.server.host, config.server.port)
            await site.start()
        backend = "redis" if config.redis_url else "in-process"
        log.info(
            "gateway.started",
            http=f"http://{config.server.host}:{config.server.port}" if http else None,
            worker=worker,
            backend=backend,
            channels=sorted(runtime.adapters),
        )
        waiters = [asyncio.create_task(stop.wait())]
        if consumer is not None:
            waiters.append(consumer)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        log.info("gateway.stopping")
        if runner is not None:
            await runner.cleanup()
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        for waiter in waiters:
            waiter.cancel()
