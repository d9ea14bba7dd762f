"""Tools: HTTP calls to the business's own API, declared in config (`connections:`, `tools:`).

One declaration gives both what a model is offered (`ToolBox.schema`: name, description and
the JSON schema of the arguments it may set) and the validation of the arguments it, or a
procedure, passes (`jsonschema`). Parameters a verified identity fills (`identity:`) are not
in the model's schema: the gateway injects the channel's verified value, so a customer who
types someone else's email address never reaches that person's data.

A call's URL is the connection's base URL plus the tool's path, with path parameters
URL-quoted (so an argument cannot change the host or climb the path); the other arguments are
the query string (GET, DELETE) or the JSON body. Only the JMESPath `keep` projection of the
response is kept, for the transcript and the model. A `change` call carries an idempotency key
(`connection.idempotency_header`) and is never retried by the gateway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import jmespath
import jmespath.exceptions
import structlog
from jsonschema import Draft202012Validator, SchemaError
from jsonschema import ValidationError as SchemaViolation
from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from brain.outbound import (
    LOOPBACK_NAMES,
    GuardedClient,
    IPNetwork,
    Refused,
    ResponseTooLarge,
    forbidden,
    literal_address,
)
from gateway import metrics
from gateway.config import Seconds, Section
from gateway.message import Identity, IdentityKind

log = structlog.get_logger(__name__)

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_HELD = " (Changes the customer's account: held until the customer confirms it.)"


class ConnectionConfig(Section):
    """The business's API: where it is, how the gateway authenticates, what it may reach."""

    base_url: str = Field(description="e.g. https://api.example.com/v1")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description='sent on every call; secrets as "${NAME}"'
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="hosts calls may go to; default: base_url's host"
    )
    allow_networks: list[IPNetwork] = Field(
        default_factory=list,
        description="non-public networks this connection may reach (e.g. 127.0.0.1/32)",
    )
    max_response_bytes: int = Field(default=256 * 1024, ge=1024)
    idempotency_header: str | None = Field(
        default="Idempotency-Key", description="sent on change calls; unset: none is sent"
    )

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [ipaddress.ip_network(str(item), strict=False) for item in value]
        return value

    @model_validator(mode="after")
    def _usable(self) -> ConnectionConfig:
        url = URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, not {self.base_url!r}")
        hosts = [host.lower() for host in self.allowed_hosts] or [url.host.lower()]
        if url.host.lower() not in hosts:
            raise ValueError(f"base_url's host {url.host!r} is not in allowed_hosts")
        for host in hosts:
            _check_known_host(host, self.allow_networks)
        object.__setattr__(self, "allowed_hosts", hosts)
        return self


def _check_known_host(host: str, allowed: list[IPNetwork]) -> None:
    """A host whose address is known at load (a literal IP, localhost) is judged now."""
    address = literal_address(host)
    if address is None and host in LOOPBACK_NAMES:
        address = ipaddress.ip_address("127.0.0.1")
    if address is not None and forbidden(address, allowed):
        raise ValueError(
            f"{host} is not a public address (loopback, private, link-local or cloud "
            "metadata); list its network under allow_networks to allow it explicitly"
        )


class ToolConfig(Section):
    description: str = Field(min_length=1, description="what it does, for the model and agents")
    connection: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str = Field(description="appended to the base URL; {name} takes a parameter")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="a JSON schema (type: object) of the arguments",
    )
    identity: dict[IdentityKind, str] = Field(
        default_factory=dict,
        description="verified identity kind -> the parameter the gateway fills with it",
    )
    keep: str | None = Field(default=None, description="JMESPath over the JSON response")
    timeout: Seconds = 1.0
    effect: Literal["read", "change"] = "read"

    @model_validator(mode="after")
    def _usable(self) -> ToolConfig:
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON schema: {exc.message}") from None
        if self.parameters.get("type") != "object":
            raise ValueError("parameters must be a JSON schema of type object")
        names = set(self.parameters.get("properties", {}))
        missing = {*_PLACEHOLDER.findall(self.path), *self.identity.values()} - names
        if missing:
            raise ValueError(f"path or identity names parameters not declared: {sorted(missing)}")
        if self.keep is not None:
            try:
                jmespath.compile(self.keep)
            except jmespath.exceptions.ParseError as exc:
                raise ValueError(f"keep is not a valid JMESPath expression: {exc}") from None
        return self


def reference_problems(
    tools: Mapping[str, ToolConfig], connections: Mapping[str, ConnectionConfig]
) -> list[str]:
    return [
        f"tools.{name}.connection: no connection named {tool.connection!r}"
        for name, tool in tools.items()
        if tool.connection not in connections
    ]


class Outcome(StrEnum):
    OK = "ok"  # 2xx
    REJECTED = "rejected"  # 4xx: the API answered no (not found, not eligible)
    INVALID = "invalid"  # the arguments broke the schema; nothing was sent
    FAILED = "failed"  # 5xx, a redirect, a connection error, a body past the cap
    TIMEOUT = "timeout"
    REFUSED = "refused"  # the SSRF guard
    UNVERIFIED = "unverified"  # the tool needs a verified identity the customer does not have


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One call, as the transcript, the agents' card and the procedure see it."""

    tool: str
    arguments: dict[str, Any]
    outcome: Outcome
    latency_ms: float
    status: int | None = None
    data: Any = None  # the kept projection of the response
    detail: str = ""

    @property
    def failed(self) -> bool:
        """The call did not give an answer the customer can be told (tool_failed)."""
        return self.outcome not in (Outcome.OK, Outcome.REJECTED)

    @property
    def correctable(self) -> bool:
        """Nothing was sent, and the caller can mend it: other arguments, or asking the
        customer for what the business accepts instead of a verified identity."""
        return self.outcome in (Outcome.INVALID, Outcome.UNVERIFIED)

    def describe(self) -> str:
        arguments = json.dumps(self.arguments, ensure_ascii=False, sort_keys=True)
        status = f" {self.status}" if self.status is not None else ""
        detail = f": {self.detail}" if self.detail else ""
        return (
            f"tool {self.tool} {arguments} -> {self.outcome.value}{status} "
            f"in {self.latency_ms:.0f} ms{detail}"
        )

    def as_context(self) -> dict[str, Any]:
        return {"ok": self.outcome is Outcome.OK, "status": self.status, "data": self.data}


@dataclass
class _Tool:
    name: str
    config: ToolConfig
    connection: ConnectionConfig
    client: GuardedClient
    validator: Draft202012Validator = field(init=False)
    keep: jmespath.parser.ParsedResult | None = field(init=False)

    def __post_init__(self) -> None:
        self.validator = Draft202012Validator(model_schema(self.config))
        self.keep = jmespath.compile(self.config.keep) if self.config.keep else None


def model_schema(tool: ToolConfig) -> dict[str, Any]:
    """The arguments a caller may set: the declared schema minus identity-filled parameters,
    and nothing else (so no caller can slip an identity parameter in as an extra)."""
    injected = set(tool.identity.values())
    schema = dict(tool.parameters)
    schema["properties"] = {
        name: spec
        for name, spec in tool.parameters.get("properties", {}).items()
        if name not in injected
    }
    schema["additionalProperties"] = False
    schema["required"] = [
        name for name in tool.parameters.get("required", ()) if name not in injected
    ]
    return schema


class ToolBox:
    """The configured tools, ready to call; one guarded HTTP client per connection."""

    def __init__(
        self, tools: Mapping[str, ToolConfig], connections: Mapping[str, ConnectionConfig]
    ) -> None:
        clients = {
            name: GuardedClient(
                hosts=connection.allowed_hosts,
                allowed=connection.allow_networks,
                max_bytes=connection.max_response_bytes,
            )
            for name, connection in connections.items()
        }
        self._clients = list(clients.values())
        self._tools = {
            name: _Tool(name, tool, connections[tool.connection], clients[tool.connection])
            for name, tool in tools.items()
        }

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def effect(self, name: str) -> str:
        return self._tools[name].config.effect

    def timeout(self, name: str) -> float:
        return self._tools[name].config.timeout

    def idempotent(self, name: str) -> bool:
        """Whether a repeated change call is safe: the API dedupes on the idempotency key."""
        return self._tools[name].connection.idempotency_header is not None

    def schemas(self) -> list[dict[str, Any]]:
        """The tools as a model is offered them (Anthropic's tool shape)."""
        return [
            {
                "name": name,
                "description": tool.config.description
                + (_HELD if tool.config.effect == "change" else ""),
                "input_schema": model_schema(tool.config),
            }
            for name, tool in self._tools.items()
        ]

    def check(
        self, name: str, arguments: Mapping[str, Any], identity: Identity | None
    ) -> tuple[Outcome, str] | None:
        """Why a call with `arguments` cannot be made (INVALID, UNVERIFIED, and the detail);
        None when it can. Checked again by `call`; asked first for a change that is only
        proposed to the customer, so what they confirm can be done."""
        tool = self._tools[name]
        problem = next(iter(tool.validator.iter_errors(dict(arguments))), None)
        if problem is not None:
            return Outcome.INVALID, _violation(problem)
        filled = {
            parameter
            for kind, parameter in tool.config.identity.items()
            if identity is not None and identity.kind is kind
        }
        needed = set(tool.config.parameters.get("required", ())) - set(arguments) - filled
        if needed:
            return Outcome.UNVERIFIED, f"needs a verified identity for {sorted(needed)}"
        return None

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any],
        *,
        identity: Identity | None,
        idempotency_key: str | None = None,
    ) -> ToolResult:
        """Validate, inject the verified identity, call once; never raises for the API's faults."""
        tool = self._tools[name]
        arguments = dict(arguments)
        started = time.perf_counter()

        def result(outcome: Outcome, **details: Any) -> ToolResult:
            latency = (time.perf_counter() - started) * 1000
            done = ToolResult(name, arguments, outcome, round(latency, 1), **details)
            metrics.TOOL_CALLS.labels(name, outcome.value).inc()
            metrics.TOOL_LATENCY.labels(name).observe(latency / 1000)
            log.info(
                "tool.called",
                tool=name,
                outcome=outcome.value,
                status=done.status,
                latency_ms=done.latency_ms,
                detail=done.detail or None,
            )
            return done

        unusable = self.check(name, arguments, identity)
        if unusable is not None:
            outcome, detail = unusable
            return result(outcome, detail=detail)
        for kind, parameter in tool.config.identity.items():
            if identity is not None and identity.kind is kind:
                arguments[parameter] = identity.value
        try:
            status, body = await self._send(tool, arguments, idempotency_key)
        except Refused as exc:
            return result(Outcome.REFUSED, detail=str(exc))
        except TimeoutError:
            return result(Outcome.TIMEOUT, detail=f"no answer within {tool.config.timeout:g} s")
        except (aiohttp.ClientError, OSError, ResponseTooLarge) as exc:
            return result(Outcome.FAILED, detail=f"{type(exc).__name__}: {exc}")
        if status >= 500 or 300 <= status < 400:
            return result(Outcome.FAILED, status=status, detail="the API failed or redirected")
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            return result(Outcome.FAILED, status=status, detail="the response is not JSON")
        kept = tool.keep.search(payload) if tool.keep is not None and status < 300 else payload
        return result(Outcome.OK if status < 300 else Outcome.REJECTED, status=status, data=kept)

    async def _send(
        self, tool: _Tool, arguments: dict[str, Any], idempotency_key: str | None
    ) -> tuple[int, bytes]:
        config = tool.config
        in_path = set(_PLACEHOLDER.findall(config.path))
        path = _PLACEHOLDER.sub(lambda m: quote(str(arguments[m.group(1)]), safe=""), config.path)
        url = URL(tool.connection.base_url.rstrip("/") + "/" + path.lstrip("/"), encoded=True)
        rest = {name: value for name, value in arguments.items() if name not in in_path}
        headers = {
            name: value.get_secret_value() for name, value in tool.connection.headers.items()
        }
        header = tool.connection.idempotency_header
        if config.effect == "change" and idempotency_key and header:
            headers[header] = idempotency_key
        if config.method in _BODY_METHODS:
            query, body = None, rest
        else:
            query, body = {name: str(value) for name, value in rest.items()}, None
        async with asyncio.timeout(config.timeout):
            return await tool.client.request(
                config.method, url, headers=headers, params=query, json=body
            )

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


def _violation(error: SchemaViolation) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "arguments"
    return f"{where}: {error.message}"
