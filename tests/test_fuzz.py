"""Hostile input against every HTTP endpoint: never a 5xx, never an error logged, and at most
one log line (of warning or above) per request.

Every channel is on, with test secrets, pointing at the local fakes. Webhooks get unsigned
bodies (which must be refused before they are parsed) and correctly signed ones (so the parser
behind the signature is fuzzed too): deep nesting, non-object JSON, bytes that are not UTF-8,
empty and broken multipart, field names with newlines, odd content types. Hypothesis draws the
inputs; `derandomize` makes every run draw the same ones (a CI failure reproduces), and the
example counts keep the whole file to a few seconds.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from structlog.testing import capture_logs
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from adapters.telegram import SECRET_HEADER
from gateway.app.http import build_app
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.message import Inbound
from tests.fakes.discord_api import TOKEN as DISCORD_TOKEN
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack, signed_headers
from tests.fakes.telegram_api import SECRET as TELEGRAM_SECRET
from tests.fakes.telegram_api import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

PUBLIC_URL = "https://support.example.com"
API_TOKEN = "fuzz-api-token"
TWILIO_PATHS = ("/twilio/sms", "/twilio/whatsapp", "/twilio/sms/status", "/twilio/whatsapp/status")

FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class FuzzGateway:
    http: TestClient[web.Request, web.Application]
    published: list[Inbound]
    logs: list[tuple[str, str]] = field(default_factory=list)  # (level, event) per request

    @contextmanager
    def request(self) -> Iterator[None]:
        """Collects what one request logged: structlog events and stdlib records alike."""
        records = _Records(logging.WARNING)
        root = logging.getLogger()
        root.addHandler(records)
        try:
            with capture_logs() as events:
                yield
        finally:
            root.removeHandler(records)
        self.logs = [
            (event["log_level"], event["event"])
            for event in events
            if event["log_level"] not in ("debug", "info")
        ] + [(record.levelname.lower(), record.getMessage()) for record in records.records]


class _Records(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def fuzz_config(data_dir: Path, slack: str, telegram: str, twilio: str, discord: str) -> Any:
    twilio_channel = {
        "enabled": True,
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "api_url": twilio,
        "public_url": PUBLIC_URL,
    }
    return GatewayConfig.model_validate(
        {
            "data_dir": data_dir,
            "redis_url": None,
            "server": {"api_token": API_TOKEN},
            # Nothing answers (the bus is read by a recorder), so REST's wait is kept short.
            "pipeline": {"reply_timeout": 0.05},
            "channels": {
                "rest": {"enabled": True},
                "webchat": {"enabled": True},
                "slack": {
                    "enabled": True,
                    "bot_token": BOT_TOKEN,
                    "signing_secret": SIGNING_SECRET,
                    "app_token": APP_TOKEN,
                    "api_url": slack,
                },
                "telegram": {
                    "enabled": True,
                    "bot_token": TELEGRAM_TOKEN,
                    "webhook_secret": TELEGRAM_SECRET,
                    "api_url": telegram,
                    "bot_username": "fuzz_bot",
                },
                "discord": {"enabled": True, "bot_token": DISCORD_TOKEN, "api_url": discord},
                "sms": {**twilio_channel, "from_number": "+15005550006"},
                "whatsapp": {**twilio_channel, "from_number": "+14155238886"},
                "email": {"enabled": True, "from_address": "support@example.com"},
            },
        }
    )


@pytest.fixture
async def fuzz(tmp_path: Path) -> AsyncIterator[FuzzGateway]:
    """The web role with every channel on; what reaches the bus is recorded, not answered."""
    discord = FakeDiscord()
    async with FakeSlack() as slack, FakeTelegram() as telegram, FakeTwilio() as twilio, discord:
        config = fuzz_config(tmp_path, slack.base_url, telegram.url, twilio.url, discord.api_url)
        published: list[Inbound] = []

        async def record(message: Inbound) -> None:
            published.append(message)

        async with Runtime.open(config) as runtime:
            consumer = asyncio.create_task(runtime.bus.consume(record))
            async with TestClient(TestServer(build_app(runtime))) as client:
                yield FuzzGateway(client, published)
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)


# -- what is drawn ----------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(["message", "event_callback", "block_actions", "url_verification", "im"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)


@st.composite
def deep_json(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=500, max_value=100_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return opener * depth + ("1" if opener != "[" else "") + closer * depth


JSON_BODIES = (
    JSON_VALUES.map(json.dumps)
    | deep_json()
    | st.sampled_from(["[]", "null", "1", '"text"', "{", '{"a": NaN}', "1e99999", ""])
)
RAW_BODIES = (
    st.binary(max_size=200)
    | st.sampled_from([b"\xff\xfe\xfd", b"Body=%ff%fe", b"a=\xff", b"\x00" * 10, b"%", b"=&=&"])
    | JSON_BODIES.map(str.encode)
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "application/json; charset=no-such-codec",
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=no-such-codec",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "text/plain",
        "application/octet-stream",
        "",
    ]
)
FIELD_NAMES = st.text(max_size=15) | st.sampled_from(
    ["Body", "From", "To", "MessageSid", "MessageStatus", "NumMedia", "MediaUrl0", "a\nb", "é"]
)
FORM_PAIRS = st.lists(st.tuples(FIELD_NAMES, st.text(max_size=40)), max_size=8)


def _multipart(pairs: list[tuple[str, str]]) -> tuple[bytes, str]:
    """A multipart body written by hand: aiohttp's client refuses the names drawn here."""
    boundary = "fuzzboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in pairs
    ]
    body = "".join(parts) + f"--{boundary}--\r\n" if parts else ""
    return body.encode("utf-8", "surrogatepass"), f"multipart/form-data; boundary={boundary}"


def _with_fields(pairs: list[tuple[str, str]], **present: str) -> list[tuple[str, str]]:
    return [*present.items(), *pairs]


# -- the tests ------------------------------------------------------------------------------------


def assert_clean(fuzz: FuzzGateway, status: int, what: object) -> None:
    event(f"HTTP {status}")  # the spread of answers: --hypothesis-show-statistics
    shown = repr(what)[:300]
    assert status < 500, f"{status} for {shown}"
    errors = [entry for entry in fuzz.logs if entry[0] in ("error", "critical", "exception")]
    assert not errors, f"{errors} for {shown}"
    assert len(fuzz.logs) <= 1, f"{fuzz.logs} for {shown}"


@FUZZ
@given(
    body=RAW_BODIES,
    content_type=CONTENT_TYPES,
    authorized=st.booleans(),
    idempotency=st.none() | st.text(max_size=300),
)
async def test_rest_post(
    fuzz: FuzzGateway, body: bytes, content_type: str, authorized: bool, idempotency: str | None
) -> None:
    headers = {"Content-Type": content_type}
    if authorized:
        headers["Authorization"] = f"Bearer {API_TOKEN}"
    if idempotency is not None and idempotency.isprintable() and idempotency.isascii():
        headers["Idempotency-Key"] = idempotency
    with fuzz.request():
        response = await fuzz.http.post("/api/messages", data=_stream(body), headers=headers)
    assert_clean(fuzz, response.status, body)


@FUZZ
@given(value=JSON_VALUES, extra=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3))
async def test_rest_post_json_shapes(fuzz: FuzzGateway, value: Any, extra: dict[str, Any]) -> None:
    """Near-valid bodies, so the schema and what is behind it are reached."""
    body = {"conversation_id": value, "text": value, **extra} if extra else value
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    with fuzz.request():
        response = await fuzz.http.post("/api/messages", json=body, headers=headers)
    assert_clean(fuzz, response.status, body)


@FUZZ
@given(path=st.text(min_size=1, max_size=60), authorized=st.booleans())
async def test_rest_get_and_plain_endpoints(fuzz: FuzzGateway, path: str, authorized: bool) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}"} if authorized else {}
    for url in (
        f"/api/conversations/{quote(path, safe='')}",
        f"/healthz?{quote(path)}",
        f"/readyz?{quote(path)}",
        f"/metrics?{quote(path)}",
        f"/?{quote(path)}",
    ):
        with fuzz.request():
            response = await fuzz.http.get(url, headers=headers)
        assert_clean(fuzz, response.status, url)


@FUZZ
@given(
    conversation=st.text(max_size=80),
    frames=st.lists(
        st.tuples(
            st.booleans(),
            JSON_BODIES
            | JSON_VALUES.map(lambda v: json.dumps({"type": "message", "text": v, "client_id": v})),
        ),
        min_size=1,
        max_size=4,
    ),
)
async def test_webchat_socket(
    fuzz: FuzzGateway, conversation: str, frames: list[tuple[bool, str]]
) -> None:
    with fuzz.request():
        async with fuzz.http.ws_connect(f"/webchat/ws?conversation={quote(conversation)}") as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"
            for binary, data in frames:
                if binary:
                    await ws.send_bytes(data.encode())
                else:
                    await ws.send_str(data)
            await ws.send_str('{"type": "ping"}')  # answered with an error frame: the socket lives
            while True:
                frame = await ws.receive(timeout=5)
                if frame.type is not WSMsgType.TEXT:
                    break
                if json.loads(frame.data).get("message", "").startswith("expected"):
                    break
    assert_clean(fuzz, 101, frames)


SLACK_KEYS = st.sampled_from(
    [
        "type",
        "event",
        "team_id",
        "api_app_id",
        "actions",
        "user",
        "container",
        "token",
        "challenge",
        "enterprise_id",
        "authorizations",
        "channel",
        "ts",
        "thread_ts",
        "text",
    ]
)
SLACK_OBJECTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SLACK_KEYS, inner, max_size=6),
    max_leaves=16,
)


@st.composite
def slack_bodies(draw: st.DrawFn) -> tuple[str, str]:
    """(content type, body): JSON events, form-encoded `payload=` actions, or anything."""
    kind = draw(st.sampled_from(["event", "action", "raw"]))
    if kind == "event":
        message = st.fixed_dictionaries(
            {
                "type": st.sampled_from(["message", "app_mention"]),
                "channel": _maybe(st.sampled_from(["D1", "C1"])),
                "user": _maybe(st.just("U1")),
                "ts": _maybe(st.just("1.000001")),
                "text": _maybe(st.text(max_size=30)),
                "channel_type": st.sampled_from(["im", "channel"]),
            },
            optional={"files": _maybe(st.lists(SLACK_OBJECTS, max_size=2)), "subtype": SCALARS},
        )
        payload = draw(
            SLACK_OBJECTS
            | st.fixed_dictionaries(
                {
                    "type": st.just("event_callback"),
                    "team_id": _maybe(st.just("T1")),
                    "event": _maybe(message),
                }
            )
        )
        return "application/json", json.dumps(payload)
    if kind == "action":
        action = st.fixed_dictionaries(
            {
                "action_id": st.sampled_from(["handoff_claim", "handoff_resolve", "other"]),
                "value": st.text(max_size=20),
                "action_ts": st.text(max_size=10),
            }
        )
        payload = draw(
            st.fixed_dictionaries(
                {
                    "type": st.just("block_actions"),
                    "actions": st.lists(action | SLACK_OBJECTS, max_size=2) | SLACK_OBJECTS,
                    "user": SLACK_OBJECTS | st.fixed_dictionaries({"id": SCALARS}),
                    "team": SLACK_OBJECTS,
                    "container": SLACK_OBJECTS,
                }
            )
            | JSON_BODIES
        )
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return "application/x-www-form-urlencoded", urlencode({"payload": text})
    return draw(CONTENT_TYPES), draw(JSON_BODIES | st.text(max_size=100))


@FUZZ
@given(body=slack_bodies(), signed=st.booleans())
async def test_slack_events(fuzz: FuzzGateway, body: tuple[str, str], signed: bool) -> None:
    content_type, text = body
    if signed:
        headers = signed_headers(SIGNING_SECRET, text, content_type=content_type)
    else:
        headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": str(int(time.time()))}
    with fuzz.request():
        response = await fuzz.http.post(
            "/slack/events", data=_stream(text.encode()), headers=headers
        )
    assert_clean(fuzz, response.status, (body, signed))
    if not signed:
        assert response.status == 401


def _maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything: reaches past the schema, and probes it."""
    return value | JSON_VALUES


TELEGRAM_USERS = st.fixed_dictionaries(
    {"id": _maybe(st.integers()), "is_bot": _maybe(st.booleans()), "first_name": st.text()}
)
TELEGRAM_UPDATES = st.fixed_dictionaries(
    {
        "update_id": _maybe(st.integers()),
        "message": _maybe(
            st.fixed_dictionaries(
                {
                    "message_id": st.integers(),
                    "date": st.integers(min_value=0),
                    "chat": st.fixed_dictionaries(
                        {"id": st.integers(), "type": st.sampled_from(["private", "group", "x"])}
                    ),
                    "from": _maybe(TELEGRAM_USERS),
                    "text": _maybe(st.text(max_size=40)),
                    "entities": _maybe(
                        st.lists(
                            st.fixed_dictionaries(
                                {
                                    "type": st.sampled_from(["mention", "text_mention", "bold"]),
                                    "offset": st.integers(-5, 50),
                                    "length": st.integers(-5, 50),
                                }
                            ),
                            max_size=3,
                        )
                    ),
                }
            )
        ),
    }
)


@FUZZ
@given(
    body=RAW_BODIES | TELEGRAM_UPDATES.map(lambda update: json.dumps(update).encode()),
    secret=st.sampled_from([None, "wrong", TELEGRAM_SECRET, TELEGRAM_SECRET]),
)
async def test_telegram_webhook(fuzz: FuzzGateway, body: bytes, secret: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    with fuzz.request():
        response = await fuzz.http.post("/telegram/webhook", data=_stream(body), headers=headers)
    assert_clean(fuzz, response.status, body)
    if secret != TELEGRAM_SECRET:
        assert response.status == 401


@FUZZ
@given(
    path=st.sampled_from(TWILIO_PATHS),
    pairs=FORM_PAIRS,
    complete=st.booleans(),
    signed=st.booleans(),
    encoding=st.sampled_from(["urlencoded", "multipart", "raw"]),
    raw=RAW_BODIES,
)
async def test_twilio_webhooks(
    fuzz: FuzzGateway,
    path: str,
    pairs: list[tuple[str, str]],
    complete: bool,
    signed: bool,
    encoding: str,
    raw: bytes,
) -> None:
    if complete:
        pairs = _with_fields(pairs, MessageSid="SM1", From="+16505558893", MessageStatus="failed")
    form = MultiDict(pairs)
    headers = {}
    if signed:
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + path, form)
        headers["X-Twilio-Signature"] = signature
    data: Any
    if encoding == "urlencoded":
        data = urlencode(pairs).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif encoding == "multipart":
        data, headers["Content-Type"] = _multipart(pairs)
    else:
        data = raw
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    with fuzz.request():
        response = await fuzz.http.post(path, data=_stream(data), headers=headers)
    assert_clean(fuzz, response.status, (path, pairs, encoding))
    if not signed:
        assert response.status in (400, 403, 415)


def _stream(body: Any) -> Any:
    """Raw bytes as a stream: aiohttp's client warns (an error here) on a large raw body."""
    return io.BytesIO(body) if isinstance(body, bytes) else body
