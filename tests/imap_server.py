"""A throwaway Dovecot IMAP server on a free loopback port, for the email tests.

Plaintext login on loopback; any user name logs in with `PASSWORD` and gets its own Maildir, so
each test reads a fresh mailbox. As root, Dovecot's own unprivileged users run the login and
internal processes and mail belongs to `nobody`; as another user, everything runs as that user.
"""

from __future__ import annotations

import getpass
import grp
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import NOT_INSTALLED

PASSWORD = "imap-test-password"
NO_IDLE = "IMAP4rev1 LITERAL+ UIDPLUS"  # what a server without IDLE announces


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    password: str = PASSWORD


def dovecot_binary() -> str:
    """The dovecot binary (in sbin, which a non-root PATH may lack)."""
    binary = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.fail(NOT_INSTALLED.format(binary="dovecot", package="dovecot-imapd"))
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def dovecot(*, idle: bool = True, port: int | None = None) -> Iterator[ImapServer]:
    binary = dovecot_binary()
    port = port or _free_port()
    # Not pytest's tmp_path: its 0700 parents would keep Dovecot's unprivileged users out.
    base = Path(tempfile.mkdtemp(prefix="dovecot-"))
    base.chmod(0o755)
    mail = base / "mail"
    mail.mkdir()
    if os.geteuid() == 0:
        internal, login, mail_user = "dovecot", "dovenull", "nobody"
        internal_group = "dovecot"
        mail_group = "nogroup" if _group_exists("nogroup") else "nobody"
        shutil.chown(mail, mail_user, mail_group)
    else:
        internal = login = mail_user = getpass.getuser()
        internal_group = mail_group = grp.getgrgid(os.getgid()).gr_name
    capability = "" if idle else f"imap_capability = {NO_IDLE}\n"
    config = base / "dovecot.conf"
    config.write_text(
        f"""\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
mail_location = maildir:{mail}/%u
mail_uid = {mail_user}
mail_gid = {mail_group}
{capability}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={mail}/%u
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-F", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_port(port, process, base)
        yield ImapServer("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], base: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = base / "dovecot.log"
            detail = log.read_text() if log.exists() else ""
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"dovecot exited with {process.returncode}: {stderr}{detail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("dovecot did not start within 10 s")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
