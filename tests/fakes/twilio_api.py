"""A local fake of Twilio's Messages REST API (and the account fetch) for the real twilio SDK.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP Basic auth (account
SID and auth token) checked, as on `GET /2010-04-01/Accounts/{AccountSid}.json` (the account).
Every attempt is recorded; accepted messages get an `SM…` sid and answer 201 with the Message
resource. The next attempts can be scripted to fail with a status and Twilio error code, and a
`Retry-After` header (20429 answers 429, for instance).

    async with FakeTwilio() as twilio:
        client.api.base_url = twilio.url
        twilio.fail_next(429, code=20429, retry_after=1)
        await client.messages.create_async(to="+15550001", from_="+15550002", body="hi")
        assert twilio.attempts == 2 and twilio.messages[0]["Body"] == "hi"
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
FRIENDLY_NAME = "Kettle & Crane support"


@dataclass(frozen=True)
class Failure:
    status: int
    code: int
    retry_after: int | None


class FakeTwilio(FakeServer):
    """Twilio's REST API on 127.0.0.1:<free port>; use as `async with FakeTwilio() as twilio:`."""

    def __init__(self, *, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self._authorization = "Basic " + base64.b64encode(
            f"{account_sid}:{auth_token}".encode()
        ).decode("ascii")
        self.attempts = 0  # create requests that passed authentication, failed ones included
        self.messages: list[dict[str, str]] = []  # the form fields of every accepted message
        self._failures: list[Failure] = []
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account_sid}/Messages.json", self._create)
        app.router.add_get("/2010-04-01/Accounts/{account_sid}.json", self._account)
        super().__init__(app)

    def fail_next(
        self, status: int, *, code: int | None = None, retry_after: int | None = None
    ) -> None:
        """The next create answers `status` with a Twilio error body (and sends nothing)."""
        self._failures.append(Failure(status, code or status, retry_after))

    def _refused(self, request: web.Request) -> web.Response | None:
        """Wrong credentials (401), or another account's path (404)."""
        if request.headers.get("Authorization") != self._authorization:
            return _error(401, 20003, "Authenticate")
        if request.match_info["account_sid"] != self.account_sid:
            return _error(404, 20404, "The requested resource was not found")
        return None

    async def _account(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        # https://www.twilio.com/docs/iam/api/account#account-properties (the fields read here)
        return web.json_response(
            {
                "sid": self.account_sid,
                "friendly_name": FRIENDLY_NAME,
                "status": "active",
                "type": "Full",
                "uri": f"/2010-04-01/Accounts/{self.account_sid}.json",
            }
        )

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        self.attempts += 1
        if self._failures:
            failure = self._failures.pop(0)
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
            return _error(failure.status, failure.code, "Scripted failure", headers)
        form = {key: str(value) for key, value in (await request.post()).items()}
        if "To" not in form:
            return _error(400, 21604, "A 'To' phone number is required.")
        if "From" not in form and "MessagingServiceSid" not in form:
            return _error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body") and "ContentSid" not in form and "MediaUrl" not in form:
            return _error(400, 21602, "Message body is required.")
        if len(form.get("Body", "")) > 1600:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 limit.")
        sid = "SM" + os.urandom(16).hex()
        self.messages.append(form)
        return web.json_response(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": form["To"],
                "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "body": form.get("Body", ""),
                "status": "queued",
                "num_media": "0",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
            status=201,
        )


def _error(
    status: int, code: int, message: str, headers: dict[str, Any] | None = None
) -> web.Response:
    # Twilio's REST error body: https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
        headers=headers,
    )
