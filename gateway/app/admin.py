"""`/admin/report`: the archive's report in the browser, behind `GATEWAY_ADMIN_TOKEN` (sent as
`Authorization: Bearer ...` or `?token=...`); with no token set the route does not exist."""

from __future__ import annotations

import hmac
from datetime import timedelta

import structlog
import typer
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError

from gateway.app.archive_cli import parse_period
from gateway.app.runtime import Runtime, batch_embed, topic_namer
from gateway.archive.database import ArchiveDatabase
from gateway.archive.migrate import current
from gateway.archive.render import PAGE_POLICY, render_html
from gateway.archive.report import build_report

log = structlog.get_logger(__name__)


def admin_routes(runtime: Runtime) -> list[web.RouteDef]:
    token = runtime.config.server.admin_token
    if token is None or runtime.archive is None:
        return []
    return [web.get("/admin/report", _ReportPage(runtime, runtime.archive, token).handle)]


class _ReportPage:
    def __init__(self, runtime: Runtime, archive: ArchiveDatabase, token: SecretStr) -> None:
        self._config = runtime.config.archive
        self._archive = archive
        self._embed = batch_embed(runtime.knowledge)
        self._name_topics = topic_namer(runtime.config)
        self._token = token.get_secret_value().encode()
        self._migrated = False  # checked until it is: migrations run before a release

    async def handle(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(
                reason="admin token required", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            since = parse_period(request.query.get("since", "7d"))
        except typer.BadParameter as error:
            raise web.HTTPBadRequest(reason=str(error)) from None
        await self._check_schema()
        try:
            report = await build_report(
                self._archive,
                since=since,
                window=timedelta(seconds=self._config.resolution_window),
                repeat_window=timedelta(seconds=self._config.repeat_window),
                embed=self._embed,
                topic_similarity=self._config.topic_similarity,
                name_topics=self._name_topics,
            )
        except (SQLAlchemyError, OSError) as error:
            log.warning("admin.report_unavailable", error=type(error).__name__)
            raise _unavailable("the archive database cannot be read right now") from None
        if request.query.get("format") == "json":
            return web.json_response(text=report.model_dump_json())
        response = web.Response(text=render_html(report), content_type="text/html")
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _check_schema(self) -> None:
        """A database the release step has not migrated (`gateway db upgrade`) is named as
        such, instead of failing somewhere in the report's queries."""
        if self._migrated:
            return
        try:
            revision, head = await current(self._archive)
        except (SQLAlchemyError, OSError) as error:
            log.warning("admin.archive_unreachable", error=type(error).__name__)
            raise _unavailable("the archive database cannot be reached") from None
        if revision != head:
            raise _unavailable(
                f"the archive database is at revision {revision}, this gateway needs {head}: "
                "run `gateway db upgrade` (the release process)"
            )
        self._migrated = True

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        given = given or request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self._token)


def _unavailable(why: str) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(
        text=f"Report unavailable: {why}.\n", headers={"Retry-After": "60"}
    )
