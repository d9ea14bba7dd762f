"""The embedded archive's writer in a child process: the event loop only hands it lines.

Why: without Redis, `gateway serve` wrote the archive in its own process. SQLAlchemy prepares
each row on the event loop's thread (about 20 µs) and the SQLite driver's thread needs the GIL
to bind them, so every batch held up the requests around it: the REST overhead benchmark's p95
rose 19 % at 10 concurrent conversations. The child has its own GIL and runs on another core.

`ChildArchiveQueue.put` appends the event's JSON to a buffer, and once per turn of the event
loop the buffer goes down the child's stdin in one write. The child (`python -m
gateway.archive.child`) puts each line on a `MemoryArchiveQueue` and runs the `ArchiveWriter` on
it: the same batches, retries through a database outage and retention as in the process. It
reports its counters on stdout, so the parent's /metrics still counts what was written.

What a crash loses is what the memory queue loses: what the child had not committed yet. The
child exits when its stdin closes (the parent stopped, or died, even by SIGKILL), after writing
what it holds for up to `DRAIN_SECONDS`; a child that died is started again, and what was put
meanwhile waits for it (up to `max_buffered` events, the oldest dropped and counted beyond).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from datetime import timedelta
from pathlib import Path

import structlog
from prometheus_client import REGISTRY

from gateway import metrics
from gateway.archive import ArchiveEvent
from gateway.archive.queue import MemoryArchiveQueue
from gateway.logs import configure_logging

log = structlog.get_logger(__name__)

URL_VARIABLE = "GATEWAY_ARCHIVE_URL"  # the database URL reaches the child here, never in argv
DRAIN_SECONDS = 10.0  # after its stdin closed, the child writes what it holds this long
RESPAWN_SECONDS = 1.0
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the child imports this checkout
LINE_LIMIT = 16 * 1024 * 1024  # an event's JSON line (a long message, a tool's arguments)
# The child's counters, reported on stdout: name in the report -> the parent's counter.
_COUNTERS = {
    "written": ("gateway_archive_written_total", metrics.ARCHIVE_WRITTEN),
    "failed": ("gateway_archive_write_failures_total", metrics.ARCHIVE_FAILURES),
    "dropped": ("gateway_archive_dropped_total", metrics.ARCHIVE_DROPPED),
}


class ChildArchiveQueue:
    """The pipeline's `ArchiveSink` when the writer is a child process: `put` only.

    `run` starts the child, keeps one running until cancelled, then closes its stdin and
    waits for it to write what it holds."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int,
        flush_interval: float,
        retention: timedelta,
        max_buffered: int,
        log_level: str,
        log_format: str,
    ) -> None:
        self._url = url
        self._arguments = [
            f"--batch-size={batch_size}",
            f"--flush-interval={flush_interval}",
            f"--retention-days={retention.days}",
            f"--max-buffered={max_buffered}",
            f"--log-level={log_level}",
            f"--log-format={log_format}",
        ]
        self._pending: deque[str] = deque()
        self._max = max_buffered
        self._scheduled = False
        self._child: asyncio.subprocess.Process | None = None
        self._counted: dict[str, float] = {}
        self._stdin: asyncio.StreamWriter | None = None
        self.pid: int | None = None  # the running child's

    async def put(self, event: ArchiveEvent) -> None:
        if len(self._pending) >= self._max:
            self._pending.popleft()
            metrics.ARCHIVE_DROPPED.inc()
        self._pending.append(event.model_dump_json())
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        """What was put during this turn of the loop, in one write (kept while no child runs)."""
        self._scheduled = False
        stdin = self._stdin
        if stdin is None or stdin.is_closing() or not self._pending:
            return
        lines = "\n".join(self._pending) + "\n"
        self._pending.clear()
        stdin.write(lines.encode())

    async def run(self) -> None:
        """Until cancelled: a child runs; one that exits is logged and started again."""
        try:
            while True:
                try:
                    await self._run_child()
                except OSError:  # it could not be started (no memory, no processes left)
                    log.exception("archive.child_start_failed")
                await asyncio.sleep(RESPAWN_SECONDS)
        except asyncio.CancelledError:
            await self._close()
            raise

    async def _run_child(self) -> None:
        path = os.pathsep.join(filter(None, (PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            *self._arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path, URL_VARIABLE: self._url},
            limit=LINE_LIMIT,
        )
        self._child = child
        self._stdin, self.pid = child.stdin, child.pid
        self._counted = dict.fromkeys(_COUNTERS, 0.0)
        log.info("archive.child_started", pid=child.pid)
        self._send()  # what waited for a child
        await self._count_reports(child)
        exitcode = await child.wait()
        self._stdin = self.pid = None
        log.warning("archive.child_exited", exitcode=exitcode)

    async def _close(self) -> None:
        stdin, child = self._stdin, self._child
        if stdin is None or child is None:
            return
        with contextlib.suppress(ConnectionError):
            self._send()  # what was put since the last turn of the loop
            stdin.close()
        self._stdin = None
        try:
            async with asyncio.timeout(DRAIN_SECONDS + 5):
                await self._count_reports(child)
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()
        self.pid = None

    async def _count_reports(self, child: asyncio.subprocess.Process) -> None:
        """The child's counter lines, added to this process's counters, until its stdout
        closes; `_counted` holds what this child reported so far (its totals start at 0)."""
        assert child.stdout is not None
        async for line in child.stdout:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                for name, total in json.loads(line).items():
                    if name in self._counted and total > self._counted[name]:
                        _COUNTERS[name][1].inc(total - self._counted[name])
                        self._counted[name] = total


# --- the child ------------------------------------------------------------------------------


async def _serve(arguments: argparse.Namespace) -> None:
    # Imported here: the parent loads this module for ChildArchiveQueue without SQLAlchemy.
    from gateway.archive.database import ArchiveDatabase
    from gateway.archive.writer import ArchiveWriter

    database = ArchiveDatabase(os.environ[URL_VARIABLE])
    queue = MemoryArchiveQueue(max_buffered=arguments.max_buffered)
    writer = ArchiveWriter(
        queue,
        database,
        batch_size=arguments.batch_size,
        flush_interval=arguments.flush_interval,
        retention=timedelta(days=arguments.retention_days),
    )
    stop = asyncio.Event()
    writing = asyncio.create_task(writer.run(stop))
    reporting = asyncio.create_task(_report(arguments.flush_interval))
    lines = asyncio.StreamReader(limit=LINE_LIMIT)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    async for line in lines:
        try:
            await queue.put(ArchiveEvent.model_validate_json(line))
        except ValueError:
            log.error("archive.child_bad_line", length=len(line))
    # The parent closed the pipe, or died: write what is held, then stop.
    stop.set()
    done, _ = await asyncio.wait([writing], timeout=DRAIN_SECONDS)
    reporting.cancel()
    await asyncio.gather(reporting, return_exceptions=True)
    _print_counters()
    if not done:  # the database is down or slow: what is held is lost, and said
        log.warning("archive.child_stopped_unwritten", events=len(queue))
        os._exit(1)  # not waiting for a write the database may never answer
    await database.close()


async def _report(interval: float) -> None:
    while True:
        _print_counters()
        await asyncio.sleep(interval)


def _print_counters() -> None:
    totals = {
        name: REGISTRY.get_sample_value(sample) or 0.0 for name, (sample, _) in _COUNTERS.items()
    }
    with contextlib.suppress(BrokenPipeError):  # the parent died: nobody reads them
        print(json.dumps(totals), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.archive.child")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--flush-interval", type=float, required=True)
    parser.add_argument("--retention-days", type=int, required=True)
    parser.add_argument("--max-buffered", type=int, required=True)
    parser.add_argument("--log-level", required=True)
    parser.add_argument("--log-format", required=True)
    arguments = parser.parse_args()
    # Ctrl+C in a terminal, or a process manager's SIGTERM to the whole group: the parent
    # decides, and closes the pipe when it stops (the child then writes what it holds).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    configure_logging(arguments.log_level, arguments.log_format, [os.environ[URL_VARIABLE]])
    asyncio.run(_serve(arguments))


if __name__ == "__main__":
    main()
