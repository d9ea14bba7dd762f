"""Tools: their declaration (a config error names the key path), the SSRF guard (at load for
what the config says, at call time for what DNS answers), and each call's outcome against a
local API server: validation, identity injection, timeouts, 5xx, redirects, a size cap."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from yarl import URL

from brain.outbound import GuardedClient, Refused
from brain.tools import ConnectionConfig, Outcome, ToolBox, ToolConfig
from gateway.app.settings import parse_config
from gateway.config import ConfigError
from gateway.message import Identity, IdentityKind

SECRET_TOKEN = "shop-token-never-logged"


def connection_yaml(base_url: str, extra: str = "") -> str:
    return f"connections:\n  api:\n    base_url: {base_url}\n{extra}"


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "169.254.169.254",
        "10.0.0.5",
        "192.168.1.10",
        "172.16.3.4",
        "100.64.1.1",
        "[::1]",
        "[fd00:ec2::254]",
        "[::ffff:127.0.0.1]",
        "localhost",
        "0.0.0.0",
    ],
)
def test_a_connection_to_a_non_public_address_is_a_config_error(host: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(connection_yaml(f"http://{host}/v1"))
    assert "connections.api" in str(error.value) and "not a public address" in str(error.value)


def test_an_allowed_host_that_is_private_is_a_config_error_too() -> None:
    extra = "    allowed_hosts: [api.example.com, 10.1.2.3]\n"
    with pytest.raises(ConfigError, match=r"10\.1\.2\.3 is not a public address"):
        parse_config(connection_yaml("https://api.example.com/v1", extra))


def test_the_operator_may_allow_a_network_explicitly() -> None:
    config = parse_config(
        connection_yaml("http://127.0.0.1:9000/api", "    allow_networks: [127.0.0.1/32]\n")
    )
    assert config.connections["api"].allowed_hosts == ["127.0.0.1"]


def test_tool_declarations_are_checked_with_their_key_path() -> None:
    base = connection_yaml("https://api.example.com")
    with pytest.raises(ConfigError, match=r"tools.order.connection: no connection named 'shopp'"):
        parse_config(base + "tools:\n  order: {description: d, connection: shopp, path: /o}\n")
    with pytest.raises(ConfigError, match=r"tools.order.*not a valid JSON schema"):
        parse_config(
            base + "tools:\n  order: {description: d, connection: api, path: /o, "
            "parameters: {type: object, properties: {id: {type: 12}}}}\n"
        )
    with pytest.raises(ConfigError, match=r"tools.order.*JMESPath"):
        parse_config(
            base + "tools:\n  order: {description: d, connection: api, path: /o, keep: 'a[['}\n"
        )
    with pytest.raises(ConfigError, match=r"tools.order.*not declared: \['id'\]"):
        parse_config(base + "tools:\n  order: {description: d, connection: api, path: '/o/{id}'}\n")


def test_a_change_tool_in_a_procedure_needs_a_confirmation() -> None:
    text = connection_yaml("https://api.example.com") + (
        "tools:\n  cancel: {description: d, connection: api, path: /c, method: POST, "
        "effect: change}\n"
        "procedures:\n  stop:\n    triggers: {en: [cancel it]}\n    steps:\n      - call: cancel\n"
    )
    with pytest.raises(ConfigError, match=r"procedures.stop.steps.0.call: cancel changes"):
        parse_config(text)


# --- at call time -------------------------------------------------------------------------


class FakeDNS(AbstractResolver):
    """The name service at the network edge: answers the names it was given."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)
            for address in self.answers[host]
        ]

    async def close(self) -> None: ...


class FakeApi:
    """A local HTTP API: records what it was sent, answers as each test needs."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.bodies: list[Any] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.bodies.append(await request.json() if request.can_read_body else None)
        path = request.path
        if path == "/slow":
            await asyncio.sleep(2)
        if path == "/broken":
            return web.json_response({"error": "boom"}, status=503)
        if path == "/missing":
            return web.json_response({"error": "no such order"}, status=404)
        if path == "/redirect":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if path == "/huge":
            return web.json_response({"blob": "x" * 300_000})
        return web.json_response(
            {
                "id": "KC-1",
                "status": "dispatched",
                "internal": "not for the model",
                "path": path,
                "query": dict(request.query),
            }
        )


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, int]]:
    fake = FakeApi()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield fake, server.port
    await server.close()


def loopback() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network("127.0.0.1/32")]


@pytest.mark.parametrize(
    "answers",
    [["127.0.0.1"], ["169.254.169.254"], ["10.2.3.4"], ["93.184.216.34", "192.168.0.7"]],
)
async def test_a_host_that_resolves_to_a_forbidden_address_is_refused_at_call_time(
    api: tuple[FakeApi, int], answers: list[str]
) -> None:
    fake, port = api
    dns = FakeDNS({"api.shop.test": answers})
    client = GuardedClient(hosts=["api.shop.test"], allowed=[], max_bytes=1024, resolver=dns)
    try:
        with pytest.raises(Refused, match="resolves to"):
            await client.request("GET", URL(f"http://api.shop.test:{port}/orders"), headers={})
    finally:
        await client.close()
    assert dns.asked == ["api.shop.test"] and fake.requests == []


async def test_the_checked_address_is_the_one_connected_to(api: tuple[FakeApi, int]) -> None:
    """Resolved once, by the guard: the request reaches the address the guard allowed."""
    fake, port = api
    dns = FakeDNS({"api.shop.test": ["127.0.0.1"]})
    client = GuardedClient(
        hosts=["api.shop.test"], allowed=loopback(), max_bytes=4096, resolver=dns
    )
    try:
        status, _ = await client.request("GET", URL(f"http://api.shop.test:{port}/x"), headers={})
    finally:
        await client.close()
    assert status == 200 and len(fake.requests) == 1 and dns.asked == ["api.shop.test"]


async def test_a_host_outside_the_connection_is_refused_before_any_lookup() -> None:
    dns = FakeDNS({})
    client = GuardedClient(hosts=["api.shop.test"], allowed=[], max_bytes=1024, resolver=dns)
    with pytest.raises(Refused, match="not among the connection's allowed hosts"):
        await client.request("GET", URL("http://169.254.169.254/latest"), headers={})
    assert dns.asked == []
    await client.close()


def toolbox(port: int, **tools: dict[str, Any]) -> ToolBox:
    connection = ConnectionConfig.model_validate(
        {
            "base_url": f"http://127.0.0.1:{port}",
            "allow_networks": ["127.0.0.1/32"],
            "headers": {"Authorization": f"Bearer {SECRET_TOKEN}"},
            "max_response_bytes": 100_000,
        }
    )
    declared = {
        name: ToolConfig.model_validate({"connection": "api", "description": name, **spec})
        for name, spec in tools.items()
    }
    return ToolBox(declared, {"api": connection})


ORDER = {
    "path": "/orders/{order_id}",
    "parameters": {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^KC-[0-9]+$"},
            "email": {"type": "string"},
        },
        "required": ["order_id", "email"],
    },
    "identity": {"email": "email"},
    "keep": "{id: id, status: status}",
}


async def test_a_read_call_keeps_only_the_declared_fields_and_gets_the_verified_identity(
    api: tuple[FakeApi, int],
) -> None:
    fake, port = api
    tools = toolbox(port, order=ORDER)
    jane = Identity(kind=IdentityKind.EMAIL, value="jane@example.com")
    result = await tools.call("order", {"order_id": "KC-1"}, identity=jane)
    await tools.close()
    assert result.outcome is Outcome.OK and result.data == {"id": "KC-1", "status": "dispatched"}
    assert fake.requests[0].path == "/orders/KC-1"
    assert fake.requests[0].query["email"] == "jane@example.com"
    assert fake.requests[0].headers["Authorization"] == f"Bearer {SECRET_TOKEN}"
    assert SECRET_TOKEN not in result.describe() and "internal" not in result.describe()


async def test_the_model_schema_leaves_out_the_identity_and_extras_are_refused(
    api: tuple[FakeApi, int],
) -> None:
    fake, port = api
    tools = toolbox(port, order=ORDER)
    [schema] = tools.schemas()
    assert "email" not in schema["input_schema"]["properties"]
    assert schema["input_schema"]["required"] == ["order_id"]
    # A caller (a model, a procedure) naming the customer itself is refused, not sent.
    spoofed = await tools.call(
        "order", {"order_id": "KC-1", "email": "jane@example.com"}, identity=None
    )
    # Without a verified identity, the required customer parameter is missing.
    unverified = await tools.call("order", {"order_id": "KC-1"}, identity=None)
    # A path argument cannot climb out of its segment.
    escaped = await tools.call("order", {"order_id": "KC-1/../admin"}, identity=None)
    await tools.close()
    assert spoofed.outcome is Outcome.INVALID and "email" in spoofed.detail
    assert unverified.outcome is Outcome.UNVERIFIED
    assert escaped.outcome is Outcome.INVALID
    assert fake.requests == []


@pytest.mark.parametrize(
    ("path", "outcome", "status"),
    [
        ("/broken", Outcome.FAILED, 503),
        ("/missing", Outcome.REJECTED, 404),
        ("/redirect", Outcome.FAILED, 302),
        ("/huge", Outcome.FAILED, None),
        ("/slow", Outcome.TIMEOUT, None),
    ],
)
async def test_each_failure_has_its_outcome(
    api: tuple[FakeApi, int], path: str, outcome: Outcome, status: int | None
) -> None:
    fake, port = api
    tools = toolbox(port, call={"path": path, "timeout": 0.3})
    result = await tools.call("call", {}, identity=None)
    await tools.close()
    assert (result.outcome, result.status) == (outcome, status)
    assert result.failed is (outcome is not Outcome.REJECTED)
    assert len(fake.requests) == 1  # sent once, never retried, and no redirect followed


async def test_a_change_call_carries_an_idempotency_key_and_a_read_does_not(
    api: tuple[FakeApi, int],
) -> None:
    fake, port = api
    change = {
        "path": "/returns",
        "method": "POST",
        "effect": "change",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    }
    tools = toolbox(port, start_return=change, order={"path": "/orders"})
    await tools.call("start_return", {"order_id": "KC-1"}, identity=None, idempotency_key="k1")
    await tools.call("order", {}, identity=None, idempotency_key="k2")
    await tools.close()
    assert fake.requests[0].headers["Idempotency-Key"] == "k1"
    assert fake.bodies[0] == {"order_id": "KC-1"}
    assert "Idempotency-Key" not in fake.requests[1].headers
