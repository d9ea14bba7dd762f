"""Redis restarting, failing over or flushed, against dedicated redis-servers the tests kill,
shut down and start again (see `redis_process` in conftest).

Without persistence Redis comes back empty: workers recreate the consumer group and go on, and
readiness says when they cannot. With AOF nothing acknowledged is lost. A result whose pub/sub
notification was dropped still reaches its REST waiter or web chat socket, and a retried
Idempotency-Key after a web restart gets the answer, not a 409.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request
from redis.exceptions import RedisError
from typer.testing import CliRunner

from gateway.app.cli import _check, app
from gateway.app.http import build_app
from gateway.app.runtime import Runtime
from gateway.app.settings import GatewayConfig
from gateway.bus.redis import GROUP, STREAM, RedisBus
from gateway.message import Inbound, TranscriptEntry
from gateway.redis_client import connect_redis
from gateway.results import LOST_CONFIRM_SECONDS, RECHECK_SECONDS
from tests.harness import working
from tests.redis_process import RedisProcess
from tests.test_bus_contract import consuming, message, wait_for

StartRedis = Callable[..., RedisProcess]
Http = TestClient[Request, Application]
PRICING = "How much is the Duo plan in the UK?"
# How long Redis stays down in a restart: long enough for every client to notice.
DOWNTIME = 1.0


async def until(condition: Callable[[], bool | Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        met = condition()
        if met if isinstance(met, bool) else await met:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def redis_bus(
    server: RedisProcess, *, max_concurrency: int = 8, claim_idle: float = 30.0
) -> AsyncIterator[RedisBus]:
    """A bus on its own connections to `server`, as a separate process would have."""
    client = connect_redis(server.url())
    bus = RedisBus(
        client, max_concurrency=max_concurrency, claim_idle=claim_idle, conversation_ttl=3600
    )
    try:
        yield bus
    finally:
        await bus.close()
        await client.aclose()


async def lose_everything(server: RedisProcess, how: str) -> None:
    if how == "flushall":
        with server.client() as admin:
            admin.flushall()
        return
    server.kill() if how == "sigkill" else server.shutdown()
    await asyncio.sleep(DOWNTIME)
    server.start()


@pytest.mark.parametrize("how", ["sigkill", "shutdown", "flushall"])
async def test_workers_resume_when_redis_comes_back_empty(
    redis_process: StartRedis, how: str
) -> None:
    server = redis_process()  # no AOF, no snapshots: a restart comes back empty
    with server.client() as admin:
        await _lose_everything_under_a_worker(server, how, admin)


async def _lose_everything_under_a_worker(
    server: RedisProcess, how: str, admin: redis.Redis
) -> None:
    in_flight, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handler(m: Inbound) -> None:
        if m.provider_message_id == "c1-0":
            in_flight.set()
            await release.wait()
        handled.append(m.provider_message_id)

    async with redis_bus(server) as bus, consuming(bus, handler):
        await bus.publish(message("c1", 0))
        await bus.publish(message("c1", 1))
        await asyncio.wait_for(in_flight.wait(), 5)
        # c1-0 in flight and c1-1 read, queued behind it, when Redis loses everything.
        await until(lambda: admin.xpending(STREAM, GROUP)["pending"] == 2, 5)
        await lose_everything(server, how)
        release.set()  # finishing after Redis lost them must not mark c1's new ones done
        await wait_for(lambda: handled == ["c1-0", "c1-1"], seconds=5)
        started = time.monotonic()
        await bus.publish(message("c1", 2))
        await bus.publish(message("c2", 0))
        await wait_for(lambda: {"c1-2", "c2-0"} <= set(handled), seconds=5)
        print(f"\n{how}: new messages handled {time.monotonic() - started:.2f}s after publish")
    assert sorted(handled) == ["c1-0", "c1-1", "c1-2", "c2-0"]


async def test_a_turn_that_failed_while_redis_was_down_is_done_once_it_is_back_empty(
    redis_process: StartRedis,
) -> None:
    """Nobody could claim the entry again (Redis lost it): the worker that holds it retries."""
    server = redis_process()
    in_flight, release, failed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    done: list[str] = []
    store = connect_redis(server.url())  # what the turn itself reads and writes
    async with redis_bus(server) as bus:

        async def handler(m: Inbound) -> None:
            in_flight.set()
            await release.wait()
            try:
                await store.incr("turns")
            except RedisError:
                failed.set()
                raise
            done.append(m.provider_message_id)

        async with consuming(bus, handler):
            await bus.publish(message("c1", 0))
            await asyncio.wait_for(in_flight.wait(), 5)
            server.kill()
            release.set()
            await asyncio.wait_for(failed.wait(), 20)
            server.start()  # empty
            await wait_for(lambda: done == ["c1-0"], seconds=20)
    await store.aclose()


@pytest.mark.parametrize("how", ["sigkill", "shutdown"])
async def test_with_aof_nothing_acknowledged_is_lost(redis_process: StartRedis, how: str) -> None:
    server = redis_process(appendonly=True)
    acknowledged: list[str] = []
    handled: set[str] = set()

    async def handler(m: Inbound) -> None:
        await asyncio.sleep(0.01)  # so that some are in flight when Redis goes
        handled.add(m.provider_message_id)

    async def publish(publisher: RedisBus, n: int) -> None:
        m = message(f"c{n % 20}", n)
        try:
            await publisher.publish(m)
        except RedisError:
            return  # not acknowledged: the provider would send it again
        acknowledged.append(m.provider_message_id)

    async with (
        redis_bus(server, max_concurrency=1) as publisher,
        redis_bus(server, claim_idle=1.0) as worker,
        consuming(worker, handler),
    ):
        for n in range(150):
            await publish(publisher, n)
        server.kill() if how == "sigkill" else server.shutdown()
        await asyncio.sleep(DOWNTIME)
        server.start()
        for n in range(150, 300):
            await publish(publisher, n)
        await wait_for(lambda: set(acknowledged) <= handled, seconds=30)
    assert len(acknowledged) >= 150


async def readyz(http: Http, status: int, seconds: float = 10) -> dict[str, Any]:
    """/readyz's body once it answers `status` (polled)."""
    deadline = time.monotonic() + seconds
    while True:
        response = await http.get("/readyz")
        body: dict[str, Any] = await response.json()
        if response.status == status:
            return body
        assert time.monotonic() < deadline, f"/readyz still {response.status}: {body}"
        await asyncio.sleep(0.1)


async def test_readyz_is_503_while_redis_is_down_or_no_worker_can_consume(
    redis_process: StartRedis, sample_data_dir: Path
) -> None:
    server = redis_process()
    config = GatewayConfig(data_dir=sample_data_dir, redis_url=server.url())

    async def idle(_m: Inbound) -> None:
        return None

    async with Runtime.open(config) as web, TestClient(TestServer(build_app(web))) as http:
        async with redis_bus(server) as worker, consuming(worker, idle):
            await readyz(http, 200)
            server.kill()
            down = await readyz(http, 503)
            assert down["checks"]["bus"] != "ok" and down["checks"]["store"] != "ok"
            server.start()  # empty: the worker recreates the consumer group
            await readyz(http, 200)
        # No worker now, and Redis loses its data: nothing could consume what web accepts.
        with server.client() as admin:
            admin.flushall()
        gone = await readyz(http, 503)
        assert "no consumer group" in gone["checks"]["bus"]
        async with redis_bus(server) as worker, consuming(worker, idle):
            await readyz(http, 200, seconds=5)


async def test_gateway_check_warns_when_redis_does_not_persist(
    redis_process: StartRedis, sample_data_dir: Path
) -> None:
    def rows(server: RedisProcess) -> dict[str, tuple[str, str]]:
        config = GatewayConfig(data_dir=sample_data_dir, redis_url=server.url())
        return {name: (status, detail) for name, status, detail in asyncio.run(_check(config, 5.0))}

    plain = redis_process()
    with_aof = redis_process(appendonly=True)
    managed = redis_process(extra=["--rename-command", "CONFIG", ""])  # as on managed Redis
    # _check runs its own event loop, as the CLI does.
    plain_rows, aof_rows, managed_rows = await asyncio.gather(
        *(asyncio.to_thread(rows, server) for server in (plain, with_aof, managed))
    )
    status, detail = plain_rows["redis persistence"]
    assert status == "warning" and "appendonly is off" in detail
    assert aof_rows["redis persistence"] == ("ok", "appendonly yes")
    assert managed_rows["redis persistence"][0] == "warning"  # read from INFO persistence
    assert "appendonly is off" in managed_rows["redis persistence"][1]
    assert all(status != "failed" for status, _ in plain_rows.values())


def test_gateway_check_exits_zero_on_a_persistence_warning(
    redis_process: StartRedis,
    sample_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = redis_process()
    path = tmp_path / "gateway.yaml"
    path.write_text(f"data_dir: {sample_data_dir}\n")
    monkeypatch.setenv("REDIS_URL", server.url())
    result = CliRunner().invoke(app, ["check", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "appendonly is off" in result.output


# --- results across a dropped pub/sub notification ------------------------------------------


class Partition:
    """Cuts the web process off Redis (its own ACL user: connections killed, new ones refused)
    while the worker goes on: what the worker publishes meanwhile never reaches web."""

    def __init__(self, server: RedisProcess) -> None:
        self.admin = server.client()
        self.admin.acl_setuser(
            "web",
            enabled=True,
            passwords=["+web-secret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        self.web_url = server.url("web", "web-secret")

    def web_subscribed(self) -> bool:
        clients = self.admin.client_list()
        return any(c["user"] == "web" and int(c["psub"]) > 0 for c in clients)

    async def cut(self) -> None:
        self.admin.acl_setuser("web", enabled=False)
        self.admin.client_kill_filter(user="web")
        await until(lambda: not self.web_subscribed(), 5)

    def heal(self) -> None:
        self.admin.acl_setuser("web", enabled=True)

    def __enter__(self) -> Partition:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.admin.close()


@asynccontextmanager
async def web_and_worker(
    server: RedisProcess, sample_data_dir: Path, partition: Partition
) -> AsyncIterator[tuple[Runtime, Http, Runtime]]:
    """A web process (as the `web` user, behind a real HTTP server) and a worker runtime whose
    consumer the test starts."""
    web_config = GatewayConfig(data_dir=sample_data_dir, redis_url=partition.web_url)
    worker_config = GatewayConfig(data_dir=sample_data_dir, redis_url=server.url())
    async with (
        Runtime.open(web_config) as web,
        TestClient(TestServer(build_app(web))) as http,
        Runtime.open(worker_config) as worker,
    ):
        await until(partition.web_subscribed, 5)
        yield web, http, worker


async def test_a_rest_waiter_whose_notification_was_dropped_gets_its_answer(
    redis_process: StartRedis, sample_data_dir: Path
) -> None:
    server = redis_process()
    with Partition(server) as partition:
        answered, waited = await _answer_after_dropped_notification(
            server, sample_data_dir, partition
        )
    assert answered.status == 200, await answered.text()
    body = await answered.json()
    assert "£27" in body["replies"][0]["text"]
    print(f"\nanswered {waited:.2f}s after web could reach Redis again")
    assert waited < 10


async def _answer_after_dropped_notification(
    server: RedisProcess, sample_data_dir: Path, partition: Partition
) -> tuple[ClientResponse, float]:
    admin = partition.admin
    async with web_and_worker(server, sample_data_dir, partition) as (_web, http, worker):
        request = asyncio.create_task(
            http.post(
                "/api/messages",
                json={"conversation_id": "dropped", "text": PRICING},
                headers={"Idempotency-Key": "dropped-1"},
            )
        )
        await until(lambda: admin.xlen(STREAM) == 1, 10)  # published; web waits
        await partition.cut()
        async with working(worker):
            await until(lambda: bool(admin.exists("gw:processed:rest:dropped-1")), 20)
            partition.heal()
            healed = time.monotonic()
            response = await asyncio.wait_for(request, 15)  # the reply timeout is 30 s
            await response.read()
            return response, time.monotonic() - healed


async def test_a_web_chat_socket_gets_the_reply_it_missed(
    redis_process: StartRedis, sample_data_dir: Path
) -> None:
    server = redis_process()
    with Partition(server) as partition:
        history = await _history_after_dropped_reply(server, sample_data_dir, partition)
    assert [item["role"] for item in history] == ["customer", "bot"]
    assert "£27" in history[1]["text"]


async def _history_after_dropped_reply(
    server: RedisProcess, sample_data_dir: Path, partition: Partition
) -> list[dict[str, Any]]:
    async with (
        web_and_worker(server, sample_data_dir, partition) as (_web, http, worker),
        http.ws_connect("/webchat/ws") as socket,
    ):
        conversation_id = (await socket.receive_json(timeout=5))["conversation_id"]
        await socket.send_json({"type": "message", "text": PRICING, "client_id": "m1"})
        assert (await socket.receive_json(timeout=5))["type"] == "ack"
        await partition.cut()
        key = f"webchat:{conversation_id.partition('.')[0]}"  # the id the page keeps is signed
        async with working(worker):

            async def answered() -> bool:
                return len(await worker.store.transcript(key)) == 2

            await until(answered, 20)  # the reply was broadcast while web was cut off
            partition.heal()
            while (frame := await socket.receive_json(timeout=10))["type"] != "history":
                assert frame["type"] != "reply", "a dropped broadcast arrived after all"
            history: list[dict[str, Any]] = frame["history"]
            return history


async def test_a_retried_idempotency_key_after_a_web_restart_gets_the_answer(
    redis_process: StartRedis, sample_data_dir: Path
) -> None:
    server = redis_process()
    config = GatewayConfig(data_dir=sample_data_dir, redis_url=server.url())
    with server.client() as admin:
        retried, again, transcript = await _retry_after_web_restart(config, admin)
    body = await retried.json()
    assert "£27" in body["replies"][0]["text"]
    assert again.status == 200 and await again.json() == body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [entry.role.value for entry in transcript] == ["customer", "bot"]  # answered once


async def _retry_after_web_restart(
    config: GatewayConfig, admin: redis.Redis
) -> tuple[ClientResponse, ClientResponse, list[TranscriptEntry]]:
    payload = {"conversation_id": "restart", "text": PRICING}
    headers = {"Idempotency-Key": "restart-1"}
    async with Runtime.open(config) as web, TestClient(TestServer(build_app(web))) as http:
        first = asyncio.create_task(http.post("/api/messages", json=payload, headers=headers))
        await until(lambda: admin.xlen(STREAM) == 1, 10)
        first.cancel()  # the web process dies while its message waits for a worker
        await asyncio.gather(first, return_exceptions=True)
    async with (
        Runtime.open(config) as web,
        TestClient(TestServer(build_app(web))) as http,
        Runtime.open(config) as worker,
    ):
        # The retry comes while the first attempt is still queued: it waits for that answer.
        retry = asyncio.create_task(http.post("/api/messages", json=payload, headers=headers))
        await until(lambda: admin.xlen(STREAM) == 2, 10)
        async with working(worker):
            retried = await asyncio.wait_for(retry, 20)
            assert retried.status == 200, await retried.text()
            await retried.read()
            again = await http.post("/api/messages", json=payload, headers=headers)
            await again.read()
        return retried, again, await worker.store.transcript("rest:restart")


async def test_rest_callers_of_messages_redis_lost_unread_are_told_at_once(
    redis_process: StartRedis, sample_data_dir: Path
) -> None:
    """Published, not yet read by any worker, then Redis restarts without its data: those
    messages will never be answered, so their callers get 503 (send it again) within seconds,
    not a 202 at the 30 s reply timeout; a worker started afterwards answers new messages."""
    server = redis_process()  # no AOF: a SHUTDOWN and start comes back empty
    config = GatewayConfig(data_dir=sample_data_dir, redis_url=server.url())
    async with (
        Runtime.open(config) as web,
        TestClient(TestServer(build_app(web))) as http,
        Runtime.open(config) as worker,
    ):
        requests = [
            asyncio.create_task(
                http.post("/api/messages", json={"conversation_id": f"lost-{n}", "text": PRICING})
            )
            for n in range(5)
        ]
        with server.client() as admin:
            await until(lambda: admin.xlen(STREAM) == 5, 10)  # on the stream, nobody reads it
        server.shutdown()
        await asyncio.sleep(DOWNTIME)
        server.start()
        restarted = time.monotonic()
        async with working(worker):
            responses = await asyncio.wait_for(asyncio.gather(*requests), 20)
            told = time.monotonic() - restarted
            for response in responses:
                assert response.status == 503, await response.text()
                assert response.headers["Retry-After"] == "2"
                assert "send it again" in (await response.json())["error"]
            again = await http.post(
                "/api/messages", json={"conversation_id": "lost-0", "text": PRICING}
            )
            assert again.status == 200, await again.text()
    print(f"\n5 lost messages' callers told {told:.1f}s after Redis came back")
    assert told < 10  # the reply timeout is 30 s


async def test_a_message_a_worker_held_when_redis_lost_it_is_answered_not_reported_lost(
    redis_process: StartRedis, sample_data_dir: Path
) -> None:
    """The worker that holds it finishes it, so its caller waits for the answer."""
    server = redis_process()
    config = GatewayConfig(data_dir=sample_data_dir, redis_url=server.url())
    in_flight, release = asyncio.Event(), asyncio.Event()
    async with (
        Runtime.open(config) as web,
        TestClient(TestServer(build_app(web))) as http,
        Runtime.open(config) as worker,
    ):

        async def held_until_released(m: Inbound) -> None:
            in_flight.set()
            await release.wait()
            await worker.pipeline.handle(m)

        async with working(worker, consume=held_until_released):
            request = asyncio.create_task(
                http.post("/api/messages", json={"conversation_id": "held", "text": PRICING})
            )
            await asyncio.wait_for(in_flight.wait(), 10)
            server.shutdown()
            await asyncio.sleep(DOWNTIME)
            server.start()
            # Longer than web takes to report a lost message (resync, then a recheck
            # LOST_CONFIRM_SECONDS later, then the next).
            await asyncio.sleep(LOST_CONFIRM_SECONDS + 2 * RECHECK_SECONDS)
            assert not request.done()
            release.set()
            response = await asyncio.wait_for(request, 20)
            assert response.status == 200, await response.text()
            # Held past the 2 s deadline, it gets the holding reply; what matters is that it
            # is answered, to the caller that waited.
            assert (await response.json())["replies"]
