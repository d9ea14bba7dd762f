"""A throwaway PostgreSQL server for the session: `initdb` into a fresh folder and `pg_ctl`
on a free loopback port (see the `postgres_url` fixture).

PostgreSQL refuses to run as root, so as root (CI containers) both run as the `postgres`
system user the Debian package creates, in a folder it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest

USER = "gateway"
NOT_INSTALLED = (
    "PostgreSQL's {binary} is not installed: `make test` installs it, or run "
    "`apt-get update && apt-get install -y postgresql` as root"
)


def locate(binary: str) -> str:
    """initdb and pg_ctl sit outside PATH on Debian (/usr/lib/postgresql/N/bin)."""
    found = shutil.which(binary) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{binary}"), reverse=True)), None
    )
    if found is None:
        pytest.fail(NOT_INSTALLED.format(binary=binary))
    return found


class PostgresProcess:
    def __init__(self, port: int) -> None:
        self.port = port
        self.workdir = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "as root, PostgreSQL needs the `postgres` user: apt-get install postgresql"
                )
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.workdir / "data"
        self._run(locate("initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8")
        options = (
            f"-p {port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.workdir / "server.log")
        self._run(locate("pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._run(locate("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"{Path(argv[0]).name} failed: {done.stderr or done.stdout}")


async def fresh_database(server_url: str) -> str:
    """A new empty database on the server at `server_url`; its URL."""
    name = f"archive_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"
