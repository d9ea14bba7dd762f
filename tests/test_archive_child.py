"""The embedded archive's writer in a child process (gateway/archive/child.py): it writes what
the pipeline archives, is started again when it dies, writes what it holds when the gateway
stops, and never outlives its parent, even one killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from gateway import metrics
from gateway.app.settings import GatewayConfig
from gateway.archive.child import ChildArchiveQueue
from gateway.archive.database import ArchiveDatabase
from gateway.archive.migrate import upgrade
from gateway.archive.schema import turns
from tests.fakes import until
from tests.harness import Gateway
from tests.test_archive import archiving, count

# A parent that puts events on the child's queue and is killed before it could stop it.
KILLED_PARENT = """
import asyncio, os, signal, sys
from datetime import timedelta
from gateway.archive.child import ChildArchiveQueue
from gateway.logs import configure_logging
from tests.test_archive import turn

async def main():
    configure_logging("info", "json")  # on stderr: stdout tells the test the child's pid
    queue = ChildArchiveQueue(sys.argv[1], batch_size=500, flush_interval=0.05,
        retention=timedelta(days=365), max_buffered=1000, log_level="info", log_format="json")
    running = asyncio.create_task(queue.run())
    while queue.pid is None:
        await asyncio.sleep(0.01)
    print(queue.pid, flush=True)
    for n in range(50):
        await queue.put(turn(f"m{n}", customer=f"c{n % 7}"))
    await asyncio.sleep(0)  # the one write of what was put
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    """Running, and not a zombie nobody reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def archive_file(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'archive.sqlite3'}"


async def test_the_child_writes_the_turns_and_is_started_again_when_it_dies(
    archive_file: str, sample_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    config = GatewayConfig(
        data_dir=sample_data_dir,
        archive={"database_url": archive_file, "flush_interval": 0.05},
    )
    written = metrics.ARCHIVE_WRITTEN._value.get()
    async with Gateway.open(config) as gw, archiving(gw):
        queue, archive = gw.runtime.archive_queue, gw.runtime.archive
        assert isinstance(queue, ChildArchiveQueue) and archive is not None
        await until(lambda: queue.pid is not None)
        first = queue.pid
        assert first is not None and first != os.getpid()
        for n in range(5):
            assert (await gw.ask(f"c{n}", "Can I pause my subscription?"))["replies"]
        await until(lambda: _count_is(archive, 5))
        # The parent's /metrics counts what the child wrote.
        await until(lambda: metrics.ARCHIVE_WRITTEN._value.get() == written + 5)

        os.kill(first, signal.SIGKILL)
        await until(lambda: not alive(first))
        for n in range(5, 8):  # answered while no child runs: they wait for the next one
            assert (await gw.ask(f"c{n}", "Can I pause my subscription?"))["replies"]
        await until(lambda: queue.pid not in (None, first))
        await until(lambda: _count_is(archive, 8))
        second = queue.pid
        assert second is not None
        for n in range(8, 10):  # the gateway stops at once: the child writes them first
            assert (await gw.ask(f"c{n}", "Can I pause my subscription?"))["replies"]
    assert not alive(second)
    database = ArchiveDatabase(archive_file)
    assert await count(database, turns) == 10
    await database.close()


async def test_a_parent_killed_with_sigkill_leaves_a_child_that_writes_what_it_holds_and_exits(
    archive_file: str,
) -> None:
    database = ArchiveDatabase(archive_file)
    await upgrade(database)
    root = Path(__file__).parent.parent
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_PARENT,
        archive_file,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(parent.communicate(), 60)
    assert parent.returncode == -signal.SIGKILL, stderr.decode()
    child = int(stdout.split()[0])
    await until(lambda: not alive(child), 30)
    assert await count(database, turns) == 50
    await database.close()


async def _count_is(database: ArchiveDatabase, expected: int) -> bool:
    return await count(database, turns) == expected
