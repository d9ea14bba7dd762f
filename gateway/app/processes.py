"""Running the process types: `web` (HTTP), `worker` (pipeline consumers), `connectors`
(long-lived provider connections: Telegram polling, the Discord gateway, ...), or all in one."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Mapping
from datetime import timedelta

import structlog
from aiohttp import web

from gateway import timers
from gateway.app.digest import open_weekly_digest
from gateway.app.http import build_app
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.archive.child import DRAIN_SECONDS, ChildArchiveQueue
from gateway.archive.migrate import upgrade
from gateway.archive.queue import MemoryArchiveQueue
from gateway.archive.redis_queue import RedisArchiveQueue
from gateway.archive.writer import ArchiveWriter
from gateway.channel import Channel

log = structlog.get_logger(__name__)


async def run(
    config: GatewayConfig,
    *,
    http: bool,
    worker: bool,
    connectors: bool = False,
    ingest: bool = False,
) -> None:
    """Run until SIGINT/SIGTERM, then stop taking work and shut down in order.

    Only the connectors role calls the channels' `start()`; the web role never does.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with Runtime.open(config) as runtime:
        if ingest:
            await runtime.ingest_if_stale()
        if worker:  # the model loads before the first message, not within its 2 s budget
            await runtime.answerer.warm_up()
        consumer = (
            asyncio.create_task(runtime.bus.consume(runtime.pipeline.handle)) if worker else None
        )
        # Timers (the hand-off's, the satisfaction ask's) and delivery reports become bus
        # events on the worker role.
        handoff = asyncio.create_task(timers_and_reports(runtime)) if worker else None
        archiving = await start_archive_writer(runtime) if worker else None
        # The weekly digest: scheduled in the store, posted by whichever worker claims it.
        weekly = open_weekly_digest(runtime) if worker else None
        digest = asyncio.create_task(weekly.run(), name="digest") if weekly is not None else None
        runner = None
        if http:
            runner = web.AppRunner(build_app(runtime), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, config.server.host, config.server.port)
            await site.start()
        connected = await start_connectors(runtime.channels) if connectors else []
        backend = "redis" if config.redis_url else "in-process"
        # What start-up loaded (the model, the knowledge base, the modules) lives as long as
        # the process: kept out of the collector's generations, a full collection under load
        # walks only what the messages allocate.
        gc.freeze()
        log.info(
            "gateway.started",
            http=f"http://{config.server.host}:{config.server.port}" if http else None,
            worker=worker,
            connectors=[channel.name for channel in connected] if connectors else None,
            backend=backend,
            channels=sorted(runtime.channels),
        )
        waiters: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
        if consumer is not None:
            waiters.append(consumer)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        log.info("gateway.stopping")
        await stop_connectors(connected)
        if runner is not None:
            await runner.cleanup()
        for background in (handoff, archiving, digest):
            if background is not None:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        for waiter in waiters:
            waiter.cancel()


async def timers_and_reports(runtime: Runtime) -> None:
    """The worker's timers and delivery reports: the relay sweeps and forwards both; without
    one, the timers are swept alone (the satisfaction ask's)."""
    if runtime.relay is not None:
        await runtime.relay.run()
    else:
        interval = runtime.config.handoff.sweep_interval
        await timers.sweep(runtime.store, runtime.bus, interval)


async def start_archive_writer(runtime: Runtime) -> asyncio.Task[None] | None:
    """The worker's archive writer, or the child process that writes it; the embedded SQLite
    archive is migrated first (PostgreSQL is migrated by the `release` process: `gateway db
    upgrade`)."""
    if runtime.archive is None or runtime.archive_queue is None:
        return None
    archive = runtime.config.archive
    if runtime.archive.dialect == "sqlite":
        await upgrade(runtime.archive)
    queue = runtime.archive_queue
    if isinstance(queue, ChildArchiveQueue):
        return asyncio.create_task(queue.run(), name="archive:child")
    assert isinstance(queue, MemoryArchiveQueue | RedisArchiveQueue)
    writer = ArchiveWriter(
        queue,
        runtime.archive,
        batch_size=archive.batch_size,
        flush_interval=archive.flush_interval,
        retention=timedelta(days=archive.retention_days),
    )
    return asyncio.create_task(write_until_cancelled(writer), name="archive:writer")


async def write_until_cancelled(writer: ArchiveWriter) -> None:
    """The writer, stopped by its event once this task is cancelled, as the child's is: the
    batch being written finishes (a task cancelled in the middle of an aiosqlite statement was
    seen never to finish its cancellation), and what the queue holds is written, for up to
    DRAIN_SECONDS; then it is cancelled (the database is down or slow). What it leaves then
    stays in a Redis queue for another writer; from an in-memory queue it is lost, and said."""
    stop = asyncio.Event()
    writing = asyncio.create_task(writer.run(stop), name="archive:writing")
    try:
        await asyncio.shield(writing)
    except asyncio.CancelledError:
        stop.set()
        done, _ = await asyncio.wait([writing], timeout=DRAIN_SECONDS)
        if not done:
            log.warning("archive.writer_stopped_unwritten", waited=DRAIN_SECONDS)
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
        raise


async def start_connectors(channels: Mapping[str, Channel]) -> list[Channel]:
    """Open every enabled channel's long-lived connection, at once; a channel whose start fails
    is logged with its reason and left out, and the others run."""

    async def start(name: str, channel: Channel) -> Channel | None:
        try:
            await channel.start()
        except Exception as error:
            log.error(
                "connectors.start_failed", channel=name, error=f"{type(error).__name__}: {error}"
            )
            return None
        return channel

    # Channels that are HTTP only (no connection of their own) have nothing to open.
    connecting = {name: channel for name, channel in channels.items() if channel.connects}
    started = await asyncio.gather(*(start(name, channel) for name, channel in connecting.items()))
    return [channel for channel in started if channel is not None]


async def stop_connectors(channels: list[Channel]) -> None:
    for channel in channels:
        try:
            await channel.stop()
        except Exception:
            log.exception("connectors.stop_failed", channel=channel.name)
