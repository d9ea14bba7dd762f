"""The composition root: assembles the gateway from its config, the one place that wires
the core to the channels (`adapters/`) and the brain (`brain/`).

No `redis_url`: in-process bus and memory store. With it: Redis Streams and the Redis store.
Chroma runs embedded under `data_dir` unless `knowledge.chroma_url` points at a server.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Self

import structlog

from adapters import CHANNELS
from adapters.slack_console import open_console
from brain.answerer import GroundedAnswerer
from brain.claude import ClaudeAnswerer
from brain.knowledge import KnowledgeBase
from brain.ledger import CallLedger
from brain.offline import OfflineAnswerer
from brain.policy import PolicyGuard
from brain.procedures import ProcedureEngine
from brain.tools import ToolBox
from gateway.admission import Admission
from gateway.answering import Answerer
from gateway.app.demo_shop import Shop, seeded_shop
from gateway.app.settings import GatewayConfig
from gateway.archive.child import ChildArchiveQueue
from gateway.archive.database import ArchiveDatabase, database_url
from gateway.archive.queue import ArchiveSink, MemoryArchiveQueue
from gateway.archive.recorder import Recorder
from gateway.archive.redis_queue import RedisArchiveQueue
from gateway.bus import Bus
from gateway.bus.memory import MemoryBus
from gateway.bus.redis import RedisBus
from gateway.channel import Channel, ChannelContext, Limits
from gateway.pipeline import Pipeline, ReplyTexts
from gateway.redis_client import connect_redis
from gateway.relay import Relay
from gateway.results import TurnResults
from gateway.satisfaction import Satisfaction
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

if TYPE_CHECKING:
    from gateway.archive.clusters import Embed
    from gateway.archive.report import NameTopics

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    config: GatewayConfig
    bus: Bus
    store: Store
    knowledge: KnowledgeBase
    results: TurnResults
    archive_queue: ArchiveSink | None = None  # None: the archive is off
    archive: ArchiveDatabase | None = None
    admission: Admission = field(init=False)
    tools: ToolBox = field(init=False)
    demo_shop: Shop | None = field(init=False)  # served by the web role when demo.shop is on
    channels: dict[str, Channel] = field(init=False)
    answerer: Answerer = field(init=False)
    relay: Relay | None = field(init=False)
    pipeline: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.admission = Admission(config.pipeline, self.bus)
        context = ChannelContext(
            bus=self.bus,
            store=self.store,
            results=self.results,
            admission=self.admission,
            data_dir=config.data_dir,
            limits=Limits(
                max_message_chars=config.server.max_message_chars,
                reply_timeout=config.pipeline.reply_timeout,
                api_token=config.server.api_token,
                note_prefix=config.handoff.note_prefix,
                retry_after=math.ceil(config.pipeline.retry_after),
            ),
        )
        self.channels = self.open_channels(context)
        self.tools = ToolBox(config.tools, config.connections)
        self.demo_shop = seeded_shop() if config.demo.shop else None
        ledger = CallLedger(self.tools, self.store)
        self.answerer = open_answerer(config, self.knowledge, ledger)
        if config.procedures and isinstance(self.answerer, GroundedAnswerer):
            self.answerer.procedures = ProcedureEngine(
                config.procedures,
                config.brain.procedures,
                ledger=ledger,
                embed=self.knowledge.embed,
            )
        self.relay = self.open_relay()
        archive = self.open_recorder()
        messages = config.brain.messages
        self.pipeline = Pipeline(
            store=self.store,
            answerer=self.answerer,
            policy=PolicyGuard(config.brain.policy),
            channels=self.channels,
            results=self.results,
            texts=ReplyTexts(
                error=messages.error,
                holding=messages.holding,
                no_agents=messages.no_agents,
                wait=messages.wait,
            ),
            # The holding line goes out with the reserve kept to send it before the deadline.
            first_response=config.brain.deadline - config.brain.reserve,
            relay=self.relay,
            archive=archive,
            satisfaction=Satisfaction(
                config=config.satisfaction,
                store=self.store,
                channels=self.channels,
                archive=archive,
            )
            if config.satisfaction.enabled
            else None,
        )

    def open_recorder(self) -> Recorder | None:
        """What the pipeline tells the archive; it reads the turns' tool calls off the store
        only when there are tools to call."""
        if self.archive_queue is None:
            return None
        return Recorder(self.archive_queue, calls_from=self.store if self.config.tools else None)

    def open_channels(self, context: ChannelContext) -> dict[str, Channel]:
        """Every channel enabled under `channels:` (a subclass may put others in their place)."""
        sections = self.config.channels
        return {
            name: channel(section, context)
            for name, channel in CHANNELS.items()
            if (section := getattr(sections, name)).enabled
        }

    def open_relay(self) -> Relay | None:
        """The human hand-off, when agents have a console (a Slack bot token) and a channel."""
        console = open_console(self.config.channels.slack)
        if console is None or self.config.handoff.escalation_channel is None:
            return None
        return Relay(
            console=console,
            store=self.store,
            bus=self.bus,
            channels=self.channels,
            config=self.config.handoff,
        )

    @classmethod
    @asynccontextmanager
    async def open(cls, config: GatewayConfig, *, embedded: bool = False) -> AsyncIterator[Self]:
        """Open every backend; `embedded` forces the in-process bus and store (`gateway ask`)."""
        redis = None if embedded or not config.redis_url else connect_redis(config.redis_url)
        pipeline_config = config.pipeline
        bus: Bus
        store: Store
        if redis is None:
            bus = MemoryBus(max_concurrency=pipeline_config.max_concurrency)
            store = MemoryStore(
                dedupe_ttl=pipeline_config.dedupe_ttl,
                conversation_ttl=pipeline_config.conversation_ttl,
                max_conversations=pipeline_config.memory_max_conversations,
                max_bytes=pipeline_config.memory_max_bytes,
            )
        else:
            bus = RedisBus(
                redis,
                max_concurrency=pipeline_config.max_concurrency,
                claim_idle=pipeline_config.claim_idle,
                conversation_ttl=pipeline_config.conversation_ttl,
            )
            store = RedisStore(
                redis,
                dedupe_ttl=pipeline_config.dedupe_ttl,
                conversation_ttl=pipeline_config.conversation_ttl,
            )
        archive = config.archive
        archive_queue: ArchiveSink | None = None
        if not archive.enabled:
            pass
        elif redis is not None:
            archive_queue = RedisArchiveQueue(
                redis, consumer=archive_consumer(), claim_idle=pipeline_config.claim_idle
            )
        elif archive.writer_process:
            archive_queue = ChildArchiveQueue(
                archive_url(config),
                batch_size=archive.batch_size,
                flush_interval=archive.flush_interval,
                retention=timedelta(days=archive.retention_days),
                max_buffered=archive.max_buffered,
                log_level=config.logging.level,
                log_format=config.logging.format,
            )
        else:
            archive_queue = MemoryArchiveQueue(max_buffered=archive.max_buffered)
        runtime = cls(
            config=config,
            bus=bus,
            store=store,
            knowledge=open_knowledge(config),
            results=TurnResults(bus),
            archive_queue=archive_queue,
            archive=open_archive(config) if archive.enabled else None,
        )
        try:
            yield runtime
        finally:
            for channel in runtime.channels.values():
                await channel.close()
            await runtime.answerer.close()
            await runtime.tools.close()
            await bus.close()
            await store.close()
            runtime.knowledge.close()
            if runtime.archive is not None:
                await runtime.archive.close()
            if redis is not None:
                await redis.aclose()

    async def ingest_if_stale(self) -> None:
        """Ingest `knowledge.sources` when the collection is empty or out of date."""
        sources = self.config.knowledge.sources
        if not sources or not self.config.knowledge.auto_ingest:
            return
        if not await asyncio.to_thread(self.knowledge.is_stale, sources):
            return
        log.info("knowledge.ingesting", sources=sources)
        report = await asyncio.to_thread(self.knowledge.ingest, sources)
        log.info(
            "knowledge.ingested",
            added=report.added,
            updated=report.updated,
            removed=report.removed,
            unchanged=report.unchanged,
            chunks=report.chunks,
            seconds=round(report.seconds, 2),
        )


def open_answerer(config: GatewayConfig, knowledge: KnowledgeBase, ledger: CallLedger) -> Answerer:
    """Claude when an Anthropic API key is set (the offline answerer is its fallback), else
    the offline answerer alone. Claude is offered the configured tools; offline, only
    procedures call them."""
    if config.brain.anthropic_api_key is not None:
        return ClaudeAnswerer(knowledge, config.brain, ledger)
    return OfflineAnswerer(knowledge, config.brain)


def open_knowledge(config: GatewayConfig) -> KnowledgeBase:
    return KnowledgeBase(
        config.data_dir,
        chroma_url=config.knowledge.chroma_url,
        collection=config.knowledge.collection,
        embedder=config.knowledge.embedder,
        embedder_process=config.knowledge.embedder_process,
        crawl=config.knowledge.crawl,
    )


def batch_embed(knowledge: KnowledgeBase) -> Embed:
    """The knowledge base's embedder for a batch (the report's questions, the drafts' gaps): its
    vectors are not kept beside the live messages' ones."""
    return functools.partial(knowledge.embed, remember=False)


def topic_namer(config: GatewayConfig) -> NameTopics | None:
    """Claude's short names for the report's topics, when a key is set."""
    if config.brain.anthropic_api_key is None:
        return None
    from brain.topic_names import ClaudeTopicNamer

    return ClaudeTopicNamer(config.brain)


def open_archive(config: GatewayConfig) -> ArchiveDatabase:
    """The archive's database; no connection is made until it is used."""
    return ArchiveDatabase(archive_url(config))


def archive_url(config: GatewayConfig) -> str:
    url = config.archive.database_url
    return database_url(url.get_secret_value() if url else None, config.data_dir)


def archive_consumer() -> str:
    """This process's name among the archive's writers (a Redis consumer group member)."""
    return f"{socket.gethostname()}-{os.getpid()}"
