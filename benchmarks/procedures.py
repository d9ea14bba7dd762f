"""The offline procedure path: per-turn latency of the four sample procedures, side by side
with knowledge-base answers in the same run.

The gateway runs in this process on the sample config (config/gateway.yaml and its
procedures), offline, on the sample help centre; its tools call the Kettle & Crane demo shop
over HTTP on loopback (served in this process too, as `gateway serve` serves it). Conversations
run in parallel, each one customer going through one procedure, English or German, turn by
turn (trigger, order or subscription number, postcode, confirmation), then asking a
knowledge-base question. Latency is the pipeline's own figure: from the message's receipt to
its reply being sent.

    python benchmarks/procedures.py                    # 20 conversations at once, 5 rounds
    python benchmarks/procedures.py --concurrency 1    # one customer at a time
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brain.knowledge import KnowledgeBase  # noqa: E402
from brain.tools import ConnectionConfig  # noqa: E402
from gateway.app.demo_shop import PREFIX, seeded_shop  # noqa: E402
from gateway.app.runtime import Runtime  # noqa: E402
from gateway.app.settings import DemoConfig, load_config  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.message import Inbound, conversation_key  # noqa: E402

# Each script: the turns of one procedure; "tool" marks a turn that calls the shop.
SCRIPTS = (
    [("Where is my order?", "ask"), ("KC-1002", "ask"), ("SW1A 1AA", "tool")],
    [("Wo ist meine Bestellung?", "ask"), ("KC-2002", "ask"), ("10115", "tool")],
    [("I want to return order KC-1001", "ask"), ("SW1A 1AA", "tool"), ("no", "ask")],
    [
        ("Bitte die nächste Lieferung überspringen", "ask"),
        ("SUB-2001", "ask"),
        ("10115", "tool"),
        ("Ja", "tool"),
    ],
    [
        ("I need to change the delivery address of my order KC-1003", "ask"),
        ("SW1A 1AA", "tool"),
        ("12 New Street, London SW1A 2BB", "ask"),
        ("no thanks", "ask"),
    ],
)
QUESTION = ("How much is the Duo plan in the UK?", "knowledge")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=20, help="conversations at once")
    parser.add_argument("--rounds", type=int, default=5, help="conversations per slot")
    args = parser.parse_args()
    configure_logging("warning", "console")

    shop = seeded_shop()
    app = web.Application()
    app.add_subapp(PREFIX, shop.app())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    data_dir = Path(tempfile.mkdtemp(prefix="procedures-bench-"))
    config = load_config(ROOT / "config" / "gateway.yaml")
    KnowledgeBase(data_dir).ingest(config.knowledge.sources)
    connection = ConnectionConfig.model_validate(
        {"base_url": f"http://127.0.0.1:{port}{PREFIX}", "allow_networks": ["127.0.0.1/32"]}
    )
    config = config.model_copy(
        update={
            "data_dir": data_dir,
            "redis_url": None,
            "demo": DemoConfig(shop=False),
            "connections": {"shop": connection},
        }
    )
    latencies: dict[str, list[float]] = defaultdict(list)
    async with Runtime.open(config, embedded=True) as runtime:
        await runtime.knowledge.search("warm up", k=1)
        await runtime.pipeline.handle(_message("warm", "Where is my order?", 0))

        async def customer(slot: int) -> None:
            for round_ in range(args.rounds):
                script = SCRIPTS[(slot + round_) % len(SCRIPTS)]
                conversation = f"bench-{slot}-{round_}"
                for n, (text, kind) in enumerate([*script, QUESTION]):
                    result = await runtime.pipeline.handle(_message(conversation, text, n))
                    if kind != "knowledge":
                        assert result.decision.explanation.startswith("Procedure"), result
                        latencies["procedure turn"].append(result.latency_ms)
                    latencies[kind].append(result.latency_ms)

        await asyncio.gather(*(customer(slot) for slot in range(args.concurrency)))
    await runner.cleanup()

    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    print(
        f"{args.concurrency} conversations at once, {args.rounds} each; "
        f"{len(shop.actions)} changes made in the shop; load average {load}"
    )
    print(f"{'turn':<16} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    rows = {}
    for kind in ("procedure turn", "ask", "tool", "knowledge"):
        values = latencies[kind]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        rows[kind] = cuts
        print(f"{kind:<16} {len(values):>5} {cuts[49]:>8.1f} {cuts[94]:>8.1f} {cuts[98]:>8.1f}")
    ratio = rows["procedure turn"][94] / rows["knowledge"][94]
    print(f"procedure p95 / knowledge-answer p95: {ratio:.2f} (target: procedure p95 <= 100 ms)")


def _message(conversation: str, text: str, n: int) -> Inbound:
    return Inbound(
        channel="rest",
        conversation=conversation_key("rest", conversation),
        sender=conversation,
        text=text,
        provider_message_id=f"{conversation}-{n}",
    )


if __name__ == "__main__":
    asyncio.run(main())
