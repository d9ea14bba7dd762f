"""The aiohttp application of the `web` process: channel routes, health, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics
from gateway.admission import Busy
from gateway.app import demo_shop
from gateway.app.admin import admin_routes
from gateway.app.runtime import Runtime

log = structlog.get_logger(__name__)

READINESS_TIMEOUT = 2.0
MAX_BODY_BYTES = 1024 * 1024

RUNTIME_KEY = web.AppKey("runtime", Runtime)


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors, _bounded_webhooks]
    )
    app[RUNTIME_KEY] = runtime
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    for channel in runtime.channels.values():
        app.router.add_routes(channel.routes())
    app.router.add_routes(admin_routes(runtime))
    if runtime.demo_shop is not None:
        app.add_subapp(demo_shop.PREFIX, runtime.demo_shop.app())
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    checks = {
        "bus": runtime.bus.ping(),
        "store": runtime.store.ping(),
        "knowledge": runtime.knowledge.ping(),
    }
    results = await asyncio.gather(
        *(asyncio.wait_for(check, READINESS_TIMEOUT) for check in checks.values()),
        return_exceptions=True,
    )
    report = {
        name: "ok" if not isinstance(outcome, BaseException) else _describe(outcome)
        for name, outcome in zip(checks, results, strict=True)
    }
    ready = all(status == "ok" for status in report.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": report},
        status=200 if ready else 503,
    )


async def _metrics(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {READINESS_TIMEOUT:.0f}s"
    return f"{type(error).__name__}: {error}"


# What every response says unless it says more itself (the web chat's page allows its own
# script and style by hash): load nothing, be framed by no one, never sniff a content type.
DEFAULT_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """Sent with every response, error pages and websocket handshakes included: a response
    hook rather than a middleware, as aiohttp's own 404s and 413s never pass a middleware."""
    response.headers.setdefault("Content-Security-Policy", DEFAULT_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")  # frame-ancestors, for old browsers


@web.middleware
async def _bounded_webhooks(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Provider webhooks (every POST outside the REST API) in flight at once are bounded."""
    if request.method != "POST" or request.path.startswith("/api/"):
        return await handler(request)
    admission = request.app[RUNTIME_KEY].admission
    try:
        with admission.webhook(request.path.strip("/").split("/")[0]):
            return await handler(request)
    except Busy as busy:
        retry = {"Retry-After": str(admission.retry_after)}
        raise web.HTTPServiceUnavailable(reason=str(busy), headers=retry) from None


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """API clients get JSON errors with a precise message, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.content_type == "application/json":
            raise
        kept = {k: v for k, v in exc.headers.items() if k not in ("Content-Type", "Content-Length")}
        return web.json_response({"error": exc.reason}, status=exc.status, headers=kept)
    except Exception:
        log.exception("http.unhandled", path=request.path)
        metrics.ERRORS.labels("http").inc()
        return web.json_response({"error": "internal error"}, status=500)
