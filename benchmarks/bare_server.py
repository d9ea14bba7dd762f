"""The baseline: a bare aiohttp handler that parses the same request and answers the same shape."""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response(
        {
            "conversation_id": body["conversation_id"],
            "replies": [{"text": "ok"}],
            "decision": {"action": "answer", "reason": None, "confidence": 1.0, "sources": []},
            "latency_ms": 0.0,
        }
    )


def main() -> None:
    app = web.Application()
    app.router.add_post("/api/messages", handle)
    app.router.add_get("/healthz", lambda _request: web.json_response({"status": "ok"}))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
