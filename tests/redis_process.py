"""A dedicated redis-server that a test may SIGKILL, SHUT DOWN and start again on the same port
and data dir (the session-wide one in conftest is never touched); see the `redis_process`
fixture."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tests.conftest import free_port

START_TIMEOUT = 10.0


class RedisProcess:
    def __init__(self, binary: str, workdir: Path, *, appendonly: bool, extra: list[str]) -> None:
        self.port = free_port()
        self.workdir = workdir
        self._argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",  # no RDB snapshots: without AOF a restart comes back empty
            "--appendonly",
            "yes" if appendonly else "no",
            *extra,
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        credentials = f"{user}:{password}@" if user else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain synchronous client, for the test's own commands."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        with self.client() as client:
            while True:
                try:
                    if client.ping():  # answers once the AOF is loaded (LOADING before)
                        return
                except (RedisConnectionError, ResponseError):  # not up yet, or LOADING
                    pass
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.kill()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no save, no AOF fsync beyond what the OS already has."""
        if self._process is None:
            return
        os.kill(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=10)
        self._process = None

    def shutdown(self) -> None:
        """A clean SHUTDOWN (flushes the AOF when it is on)."""
        assert self._process is not None
        # The server closes the connection as it goes.
        with self.client() as client, contextlib.suppress(RedisConnectionError):
            client.shutdown()
        self._process.wait(timeout=10)
        self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
