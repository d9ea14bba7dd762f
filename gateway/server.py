"""The aiohttp application of the `web` process: channel routes, health, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics
from gateway.admission import ADMISSION_KEY, Admission
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

READINESS_TIMEOUT = 2.0
MAX_BODY_BYTES = 1024 * 1024

RUNTIME_KEY = web.AppKey("runtime", Runtime)


def build_app(runtime: Runtime) -> web.Application:
    admission = Admission(runtime.config.pipeline, runtime.bus)
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors, admission.middleware]
    )
    app[RUNTIME_KEY] = runtime
    app[ADMISSION_KEY] = admission
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    for adapter in runtime.adapters.values():
        app.router.add_routes(adapter.routes())
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
