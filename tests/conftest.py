"""Shared fixtures: a real redis-server per session, and the gateway's parts on either backend."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway.app.http import build_app
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.bus import Bus
from gateway.message import Inbound, TurnResult
from gateway.redis_client import connect_redis
from gateway.topics import RESULTS
from tests.fakes import until

TESTS = Path(__file__).parent
SAMPLE_KB = TESTS.parent / "config" / "knowledge"


NOT_INSTALLED = (
    "{binary} is not installed: `make test` installs it, or run "
    "`apt-get update && apt-get install -y {package}` as root"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _skip_as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Every test here runs on every machine (make test installs what they need), so a skip
    could only hide a missing part: it is reported as a failure, naming the skip's reason."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, which this suite does not allow: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport() -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _skip_as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report() -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _skip_as_failure(report)
    return report


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test reaches a real model because the developer's shell has a key, and a CLI run
    (which configures logging for itself) leaves the next test the logging it found."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(NOT_INSTALLED.format(binary="redis-server", package="redis-server"))
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with the sample help centre (config/knowledge) ingested once per session."""
    from brain.knowledge import KnowledgeBase

    data_dir = tmp_path_factory.mktemp("data")
    KnowledgeBase(data_dir).ingest([SAMPLE_KB])
    return data_dir


async def flush_redis(redis_url: str) -> None:
    client = connect_redis(redis_url)
    await client.flushdb()
    await client.aclose()


async def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """For a fixture parametrized memory/redis: None (the in-process bus and store) or the
    URL of an emptied Redis; no API token either way."""
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    if request.param == "memory":
        return None
    redis_url = request.getfixturevalue("redis_url")
    await flush_redis(redis_url)
    return redis_url


@pytest.fixture(params=["memory", "redis"])
async def gateway(
    request: pytest.FixtureRequest, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    """The whole gateway (web and worker roles) on one backend, behind a real HTTP server."""
    redis_url = await backend(request, monkeypatch)
    config = GatewayConfig(data_dir=sample_data_dir, redis_url=redis_url)
    async with Runtime.open(config) as runtime:
        consumer = asyncio.create_task(runtime.bus.consume(runtime.pipeline.handle))
        async with TestClient(TestServer(build_app(runtime))) as client:
            yield Gateway(runtime, client)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


@dataclass
class Gateway:
    runtime: Runtime
    http: TestClient

    async def ask(self, conversation_id: str, text: str, **headers: str) -> dict:
        response = await self.http.post(
            "/api/messages",
            json={"conversation_id": conversation_id, "text": text},
            headers=headers,
        )
        assert response.status == 200, await response.text()
        return await response.json()


class Traffic:
    """What passes through one process's bus from now on: the messages published and the
    broadcasts sent on it, and the turn results the workers (of any process) broadcast.

    Every message a worker takes ends in exactly one result (a duplicate's too), broadcast
    after its replies were sent and its turn saved. So once every published message has its
    result, the pipeline has finished all it was given: a test can then assert that something
    was *not* sent, instead of sleeping and hoping nothing more comes. Webhooks publish (and
    status callbacks broadcast) before they answer, so what they did is counted by then.
    """

    def __init__(self, bus: Bus) -> None:
        self.published: list[Inbound] = []
        self.broadcasts: list[tuple[str, dict[str, Any]]] = []
        self.results: list[TurnResult] = []
        publish, broadcast = bus.publish, bus.broadcast

        # Counted before, so a fast result never outruns its message's count.
        async def counted_publish(message: Inbound) -> None:
            self.published.append(message)
            await publish(message)

        async def counted_broadcast(topic: str, payload: dict[str, Any]) -> None:
            self.broadcasts.append((topic, payload))
            await broadcast(topic, payload)

        bus.publish = counted_publish  # type: ignore[method-assign]
        bus.broadcast = counted_broadcast  # type: ignore[method-assign]
        bus.subscribe(RESULTS.name, self._on_result)

    def _on_result(self, payload: dict[str, Any]) -> None:
        self.results.append(TurnResult.model_validate(payload))

    def told(self, topic: str) -> list[dict[str, Any]]:
        """The payloads broadcast on `topic`."""
        return [payload for sent_on, payload in self.broadcasts if sent_on == topic]

    async def settled(self, within: float = 20.0) -> list[TurnResult]:
        """Wait until every message published so far was processed; the results, in arrival
        order. (A message published in the background, such as a timer tick or a delivery
        report, counts once it reached `publish`: wait for that first.)"""
        try:
            await until(lambda: len(self.results) >= len(self.published), within)
        except AssertionError:
            raise AssertionError(
                f"{len(self.published)} messages published, {len(self.results)} turns "
                f"finished within {within:g} s: a turn failed or is stuck"
            ) from None
        return self.results
