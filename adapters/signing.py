"""Keys that sign what a channel hands out and must recognise later (the web chat's
conversation ids, the email's rating links): the operator's secret from the environment, else
a random one created once in the data dir, which every process sharing that dir reads, so they
agree (processes on several hosts must share the variable instead)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import structlog
from pydantic import SecretStr

log = structlog.get_logger(__name__)


def signing_key(secret: SecretStr | None, path: Path) -> bytes:
    """`secret`, else the key kept at `path`, created there by the first process needing it."""
    if secret is not None:
        return secret.get_secret_value().encode()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        draft.write_text(secrets.token_hex(32))
        draft.chmod(0o600)
        try:
            os.link(draft, path)  # atomic: of processes starting together, one key wins
            log.info("signing.secret_created", path=str(path))
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()


def signature(key: bytes, *parts: str) -> str:
    """HMAC-SHA256 of `parts` (separated so that no two tuples sign alike), 128 bits in hex."""
    message = "\x1f".join(parts).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def signed(key: bytes, given: str, *parts: str) -> bool:
    return hmac.compare_digest(given.encode(), signature(key, *parts).encode())
