"""Shared fixtures: a real redis-server per session, and the gateway's parts on either backend."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog
from redis.asyncio import Redis

from gateway.app.settings import GatewayConfig
from gateway.redis_client import connect_redis
from tests.harness import Gateway

if TYPE_CHECKING:
    from brain.embedder import Embedder
    from tests.redis_process import RedisProcess

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


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(NOT_INSTALLED.format(binary="redis-server", package="redis-server"))
    return binary


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, for the whole session."""
    binary = redis_binary()
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port, for the whole session."""
    from tests.postgres_process import PostgresProcess

    server = PostgresProcess(free_port())
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty archive database, SQLite in `tmp_path` or a fresh database on the session's
    PostgreSQL server, as an operator writes DATABASE_URL; not migrated yet."""
    from tests.postgres_process import fresh_database

    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'archive.sqlite3'}"
    return await fresh_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Dedicated redis-servers a test may kill and restart: `redis_process(appendonly=True,
    extra=[...])`; each has its own port and dir, and all are stopped after the test."""
    from tests.redis_process import RedisProcess

    binary = redis_binary()
    started: list[RedisProcess] = []

    def start(*, appendonly: bool = False, extra: list[str] | None = None) -> RedisProcess:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        started.append(RedisProcess(binary, workdir, appendonly=appendonly, extra=extra or []))
        return started[-1]

    yield start
    for server in started:
        server.stop()


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


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The default (multilingual) embedder, loaded once per session."""
    from brain.embedder import DEFAULT_EMBEDDER, load_embedder

    return load_embedder(DEFAULT_EMBEDDER)


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
    async with Gateway.open(GatewayConfig(data_dir=sample_data_dir, redis_url=redis_url)) as gw:
        yield gw
