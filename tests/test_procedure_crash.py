"""A worker killed (SIGKILL) while it acts on a confirmed change, with two real `gateway worker`
processes on Redis and the demo shop over HTTP: the survivor resumes the procedure at the same
step and the change is made once (sent again with the same idempotency key, which the shop
honours)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from gateway.bus.redis import RedisBus
from gateway.message import Inbound, Role
from gateway.redis_client import connect_redis
from gateway.store.redis import RedisStore
from tests.fakes import until
from tests.shop import SAMPLE_CONFIG, running_shop
from tests.test_worker_crash import _pending_of, _started, start_worker

CONVERSATION = "rest:crash"


async def test_a_worker_killed_mid_confirmation_leaves_the_change_to_the_other_once(
    redis_url: str, sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        SAMPLE_CONFIG.read_text()
        .replace("claim_idle: 30", "claim_idle: 2")
        .replace("format: console", "format: json")
        .replace("    - knowledge\n", "")
    )
    shutil.copytree(SAMPLE_CONFIG.parent / "procedures", tmp_path / "procedures")
    redis = connect_redis(redis_url)
    await redis.flushdb()
    publisher = RedisBus(redis, max_concurrency=1, claim_idle=30, conversation_ttl=3600)
    store = RedisStore(redis, dedupe_ttl=86_400, conversation_ttl=3600)

    async with running_shop() as running:
        shop = running.shop
        port = running.url.split(":")[2].split("/")[0]
        monkeypatch.setenv("PORT", port)  # the sample connection's base_url reads it
        monkeypatch.setenv("GATEWAY_DATA_DIR", str(sample_data_dir))
        workers = [start_worker(config, redis_url, tmp_path / f"worker-{n}.log") for n in range(2)]
        try:
            await until(lambda: _started(*(tmp_path / f"worker-{n}.log" for n in range(2))), 240)

            async def say(text: str, n: int) -> list[str]:
                await publisher.publish(
                    Inbound(
                        channel="rest",
                        conversation=CONVERSATION,
                        sender="crash",
                        text=text,
                        provider_message_id=f"crash-{n}",
                    )
                )

                async def replied() -> bool:
                    return len(await bot_replies()) >= n

                await until(replied, 120)
                return await bot_replies()

            async def bot_replies() -> list[str]:
                transcript = await store.transcript(CONVERSATION)
                return [entry.text for entry in transcript if entry.role is Role.BOT]

            await say("Please skip my next delivery", 1)
            await say("SUB-1001", 2)
            assert "Shall I skip" in (await say("SW1A 1AA", 3))[-1]

            # The confirmation: the shop holds the change for a while, and the worker that
            # sent it is killed while it waits for the answer.
            shop.delay = 5.0
            await publisher.publish(
                Inbound(
                    channel="rest",
                    conversation=CONVERSATION,
                    sender="crash",
                    text="yes",
                    provider_message_id="crash-4",
                )
            )
            await until(lambda: len(shop.requested) == 1, 60)
            holders = [w for w in workers if await _pending_of(redis, w.pid) > 0]
            assert len(holders) == 1, "exactly one worker holds the confirmation"
            victim = holders[0]
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            shop.delay = 0.0

            async def finished() -> bool:
                return any("next delivery is now due" in r for r in await bot_replies())

            await until(finished, 120)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=20)

        replies = await bot_replies()
        assert sum("next delivery is now due" in reply for reply in replies) == 1
        assert shop.actions == [("skip", "SUB-1001")]
        # The survivor sent the change again, under the same key: the shop made it once.
        assert len(shop.requested) == 2 and shop.requested[0] == shop.requested[1] is not None
        conversation = await store.load(CONVERSATION)
        assert conversation is not None and conversation.procedure == {}
    await redis.aclose()
