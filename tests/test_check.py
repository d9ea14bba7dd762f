"""`gateway check` tries every enabled channel's credentials with its provider: the real CLI and
the real SDKs against the local fakes, Dovecot for IMAP and aiosmtpd for SMTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from typer.testing import CliRunner, Result

from gateway.app.cli import app
from tests.conftest import free_port
from tests.fakes import discord_api, slack_api, telegram_api, twilio_api
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio
from tests.imap_server import PASSWORD, ImapServer, dovecot

SMTP_USER, SMTP_PASSWORD = "gateway", "smtp-test-password"
IMAP_USER = "support"
SECRETS = (
    slack_api.BOT_TOKEN,
    slack_api.APP_TOKEN,
    telegram_api.TOKEN,
    discord_api.TOKEN,
    twilio_api.AUTH_TOKEN,
    PASSWORD,
    SMTP_PASSWORD,
)


@dataclass
class Providers:
    slack: FakeSlack
    telegram: FakeTelegram
    discord: FakeDiscord
    twilio: FakeTwilio
    imap: ImapServer
    smtp_port: int


@pytest.fixture(scope="module")
def imap() -> Iterator[ImapServer]:
    with dovecot() as server:
        yield server


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    assert isinstance(auth_data, LoginPassword)
    accepted = (
        auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=accepted, handled=False)


@pytest.fixture
def smtp_port() -> Iterator[int]:
    """An aiosmtpd server (in its own thread) that offers AUTH over plaintext, as on loopback."""
    controller = Controller(
        object(),
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=_authenticate,
        auth_require_tls=False,
        ready_timeout=30,
    )
    controller.start()
    yield controller.port
    controller.stop()


@pytest.fixture
async def providers(imap: ImapServer, smtp_port: int) -> AsyncIterator[Providers]:
    async with AsyncExitStack() as stack:
        yield Providers(
            slack=await stack.enter_async_context(FakeSlack()),
            telegram=await stack.enter_async_context(FakeTelegram()),
            discord=await stack.enter_async_context(FakeDiscord()),
            twilio=await stack.enter_async_context(FakeTwilio()),
            imap=imap,
            smtp_port=smtp_port,
        )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CHROMA_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line, however long the detail


def channels(providers: Providers) -> dict[str, Any]:
    """Every channel with credentials enabled, pointed at the fakes, with good credentials."""
    twilio = {
        "enabled": True,
        "account_sid": twilio_api.ACCOUNT_SID,
        "auth_token": twilio_api.AUTH_TOKEN,
        "api_url": providers.twilio.url,
        "public_url": "https://support.example.com",
        "from_number": "+14155550100",
    }
    return {
        "slack": {
            "enabled": True,
            "mode": "socket",
            "bot_token": slack_api.BOT_TOKEN,
            "app_token": slack_api.APP_TOKEN,
            "api_url": providers.slack.base_url,
        },
        "telegram": {
            "enabled": True,
            "mode": "polling",
            "bot_token": telegram_api.TOKEN,
            "api_url": providers.telegram.url,
        },
        "discord": {
            "enabled": True,
            "bot_token": discord_api.TOKEN,
            "api_url": providers.discord.api_url,
        },
        "sms": twilio,
        "whatsapp": twilio,
        "email": {
            "enabled": True,
            "from_address": "support@example.com",
            "imap": {
                "host": providers.imap.host,
                "port": providers.imap.port,
                "tls": False,
                "user": IMAP_USER,
                "password": PASSWORD,
            },
            "smtp": {
                "host": "127.0.0.1",
                "port": providers.smtp_port,
                "tls": "none",
                "user": SMTP_USER,
                "password": SMTP_PASSWORD,
            },
        },
    }


async def run_check(tmp_path: Path, config: dict[str, Any], *options: str) -> Result:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["check", "--config", str(path), *options]
    # In a thread: the CLI runs its own event loop, the fakes run in this one.
    return await asyncio.to_thread(lambda: CliRunner().invoke(app, args))


def rows(result: Result) -> dict[str, tuple[str, str]]:
    """The table's rows: check -> (status, detail)."""
    found = {}
    for line in result.output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 5 and cells[1] != "check":
            found[cells[1]] = (cells[2], cells[3])
    return found


def assert_no_secret(result: Result) -> None:
    leaked = [secret for secret in SECRETS if secret in result.output]
    assert not leaked, f"secrets in the output: {leaked}"


async def test_good_credentials_are_ok_rows_with_what_the_provider_says(
    tmp_path: Path, providers: Providers
) -> None:
    result = await run_check(tmp_path, {"channels": channels(providers)})

    assert result.exit_code == 0, result.output
    found = rows(result)
    assert list(found) == [
        "config",
        "redis",
        "chroma",
        "telegram",
        "discord",
        "sms",
        "whatsapp",
        "email",
        "slack",
    ]
    account = f"account {twilio_api.FRIENDLY_NAME} (active)"
    assert found["telegram"] == ("ok", f"bot @{telegram_api.BOT_USERNAME}")
    assert found["discord"] == ("ok", f"bot kettle-support ({discord_api.BOT_ID})")
    assert found["sms"] == found["whatsapp"] == ("ok", account)
    assert found["email"] == (
        "ok",
        f"IMAP: logged in as {IMAP_USER}, INBOX selected; SMTP: EHLO ok, logged in as {SMTP_USER}",
    )
    assert found["slack"] == (
        "ok",
        f"bot token: team Fake team ({slack_api.TEAM_ID}), bot @gateway; "
        "app token: Socket Mode allowed",
    )
    # The app token, not the bot token, opened the Socket Mode connection.
    assert [call.token for call in providers.slack.calls_to("apps.connections.open")] == [
        slack_api.APP_TOKEN
    ]
    assert_no_secret(result)


async def test_rejected_credentials_say_what_was_refused_and_fail(
    tmp_path: Path, providers: Providers
) -> None:
    config = channels(providers)
    config["slack"] |= {"bot_token": "xoxb-revoked", "app_token": "xapp-revoked"}
    config["telegram"]["bot_token"] = "123456789:AAwrong-token"
    config["discord"]["bot_token"] = "wrong.discord.token"
    config["sms"] = config["sms"] | {"auth_token": "wrong-twilio-token"}
    config["email"]["imap"]["password"] = "wrong-imap-password"
    config["email"]["smtp"]["password"] = "wrong-smtp-password"

    result = await run_check(tmp_path, {"channels": config})

    assert result.exit_code == 1, result.output
    found = rows(result)
    assert found["telegram"] == ("failed", "bot token rejected (401 Unauthorized)")
    assert found["discord"] == ("failed", "bot token rejected (401 Unauthorized)")
    assert found["sms"] == ("failed", "account SID or auth token rejected (401 Unauthorized)")
    assert found["whatsapp"][0] == "ok"  # its own section still holds the good token
    assert found["slack"] == (
        "failed",
        "bot token: auth.test says invalid_auth; "
        "app token: apps.connections.open says invalid_auth",
    )
    status, detail = found["email"]
    assert status == "failed"
    assert f"IMAP: LOGIN as {IMAP_USER}: NO [AUTHENTICATIONFAILED]" in detail
    assert f"SMTP: login as {SMTP_USER} rejected: 535" in detail
    for wrong in ("xoxb-revoked", "AAwrong-token", "wrong-twilio-token", "wrong-imap-password"):
        assert wrong not in result.output


async def test_unreachable_providers_are_named_with_the_host_and_why(
    tmp_path: Path, providers: Providers, silent_port: int
) -> None:
    closed = free_port()  # nothing listens there: refused at once
    silent = f"127.0.0.1:{silent_port}"
    config = channels(providers)
    config["telegram"]["api_url"] = f"http://{silent}"
    config["discord"]["api_url"] = f"http://127.0.0.1:{closed}/api/v10"
    config["slack"]["api_url"] = f"http://127.0.0.1:{closed}/api/"
    config["sms"] = config["sms"] | {"api_url": f"http://{silent}"}
    config["email"]["imap"]["port"] = silent_port
    config["email"]["smtp"]["port"] = closed

    result = await run_check(tmp_path, {"channels": config}, "--timeout", "0.5")

    assert result.exit_code == 1, result.output
    found = rows(result)
    refused = f"cannot connect to 127.0.0.1:{closed}: Connection refused"
    assert found["telegram"] == ("failed", f"no answer from {silent} within 0.5 s")
    assert found["sms"] == ("failed", f"no answer from {silent} within 0.5 s")
    assert found["discord"] == ("failed", refused)
    assert found["slack"] == ("failed", f"bot token: {refused}; app token: {refused}")
    assert found["email"] == (
        "failed",
        f"IMAP: no answer from {silent} within 0.5 s; SMTP: {refused}",
    )
    assert found["whatsapp"][0] == "ok"
    assert_no_secret(result)


async def test_a_secret_in_an_sdk_error_is_masked(tmp_path: Path, providers: Providers) -> None:
    """aiogram puts the bot token in the URL, and aiohttp quotes a URL it cannot use."""
    config = {"channels": {"telegram": channels(providers)["telegram"]}}
    config["channels"]["telegram"]["api_url"] = "http://127.0.0.1:99999"

    result = await run_check(tmp_path, config)

    assert result.exit_code == 1, result.output
    status, detail = rows(result)["telegram"]
    assert status == "failed" and "***" in detail
    assert_no_secret(result)


async def test_email_uses_tls_as_configured(tmp_path: Path, providers: Providers) -> None:
    """Both test servers speak plaintext only: a TLS setting is tried, never skipped."""
    email = channels(providers)["email"]
    email["imap"]["tls"] = True
    email["smtp"]["tls"] = "starttls"

    result = await run_check(tmp_path, {"channels": {"email": email}})

    assert result.exit_code == 1, result.output
    imap = f"{providers.imap.host}:{providers.imap.port}"
    _, detail = rows(result)["email"]
    imap_part, smtp_part = detail.split("; ")
    # The handshake fails on the server's plaintext greeting; OpenSSL names the reason.
    assert imap_part.startswith(f"IMAP: cannot connect to {imap}: TLS failed (")
    assert smtp_part == "SMTP: SMTPException: SMTP STARTTLS extension not supported by server."


async def test_an_smtp_user_without_a_password_is_named(
    tmp_path: Path, providers: Providers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMAIL_SMTP_PASSWORD", raising=False)
    email = channels(providers)["email"]
    del email["imap"], email["smtp"]["password"]

    result = await run_check(tmp_path, {"channels": {"email": email}})

    assert result.exit_code == 1, result.output
    assert rows(result)["email"] == (
        "failed",
        f"SMTP: user {SMTP_USER} has no password (EMAIL_SMTP_PASSWORD)",
    )


def test_disabled_channels_add_no_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped config enables no channel with credentials: the table is as it always was."""
    monkeypatch.chdir(Path(__file__).parent.parent)
    result = CliRunner().invoke(app, ["check", "--config", "config/gateway.yaml"])
    assert result.exit_code == 0, result.output
    assert list(rows(result)) == ["config", "redis", "chroma"]
