"""End-to-end answer latency with the Claude answerer against a simulated Claude, streamed.

The fake Messages API (tests/fakes/anthropic_api.py) runs in its own process at the pace of a
real model: the first token after 0.6 s, then 60 or 120 tokens/s, for answers of 20 and 45
words; each pair is one row, all in one run. The gateway runs in this process on the sample
help centre with the in-process bus, its customers on the web chat (a streaming channel; the
frames go to the bus, no browser reads them): each message goes bus -> pipeline (dedupe,
state, concurrent retrieval, escalation rules, Claude streamed through the policy guard to the
channel sentence by sentence, or a holding line at the first-response deadline). Conversations
run in parallel, each sending its messages one after the other, like customers: each waits a
random 0..--think seconds (default 2) before each message, so arrivals spread out as real
traffic does; `--think 0` sends every conversation's next message the instant its reply lands.

With `--tool-ms 0 150`, each pair runs twice: as above, and with a model that first calls a
tool (`get_order`, served by this process after MS ms) and answers from its result in a second
turn, the customer told "Let me check that for you…" as the call starts when the call and that
turn would end past the first-response deadline.

Per row: first visible text (receipt -> the first streamed sentence, or the holding line, or
the whole reply), complete answer (receipt -> the reply sent whole), and where the answers
came from (the model, the offline fallback, a holding reply and escalation).

    python benchmarks/answer_latency.py                  # 4 rows of 200 messages, 50 at once
    python benchmarks/answer_latency.py --words 45 --pace 60   # one row
    python benchmarks/answer_latency.py --stall 10       # a model that never answers in time
    python benchmarks/answer_latency.py --words 20 --pace 60 --tool-ms 0 150   # with a tool
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import jiter
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from brain.config import BrainConfig, KnowledgeConfig  # noqa: E402
from brain.tools import ConnectionConfig, ToolConfig  # noqa: E402
from gateway.app.runtime import Runtime  # noqa: E402
from gateway.app.settings import GatewayConfig  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.message import (  # noqa: E402
    Action,
    Inbound,
    Reason,
    TranscriptEntry,
    TurnResult,
    conversation_key,
)
from tests.fakes.anthropic_api import decision, simulated_reply  # noqa: E402

QUESTIONS = (
    "Can I pause my subscription?",
    "How much is the Duo plan in the UK?",
    "How long does shipping to Canada take?",
    "How do I pair the smart scale with the app?",
    "What grind size should I use for a French press?",
    "Do you ship to Ireland?",
    "How do I reset my password?",
    "What does the equipment warranty cover?",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise SystemExit(f"fake Anthropic API exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("fake Anthropic API did not start")


MODEL = "answered by Claude"


def kind(result: TurnResult) -> str:
    decision = result.decision
    if decision.reason is Reason.MODEL_UNAVAILABLE and "knowledge base" in decision.explanation:
        return "retrieval past brain.deadline: holding reply + escalation"
    if decision.reason is Reason.MODEL_UNAVAILABLE:
        return "holding reply + escalation (model_unavailable)"
    if "Claude unavailable" in decision.explanation:
        return "answered offline (fallback)"
    if decision.action is Action.ANSWER:
        return MODEL
    return f"escalated ({decision.reason.value if decision.reason else '-'})"


async def conversation(runtime: Runtime, number: int, count: int, think: float) -> list[TurnResult]:
    results = []
    pause = random.Random(number)
    for turn in range(count):
        await asyncio.sleep(pause.uniform(0, think))  # the customer reads, then types
        message = Inbound(
            channel="webchat",
            conversation=conversation_key("webchat", f"{number:032x}"),
            sender=f"customer-{number}",
            text=QUESTIONS[(number + turn) % len(QUESTIONS)],
            provider_message_id=f"bench-{number}-{turn}",
        )
        with runtime.results.expect(message.id) as result:
            await runtime.bus.publish(message)
            results.append(await result)
    return results


def order_api(tool_ms: float) -> TestServer:
    """The business's API: one order, after `tool_ms` milliseconds."""

    async def order(request: web.Request) -> web.Response:
        await asyncio.sleep(tool_ms / 1000)
        number = request.match_info["id"]
        return web.json_response({"id": number, "status": "dispatched", "carrier": "DPD"})

    app = web.Application()
    app.router.add_get("/orders/{id}", order)
    return TestServer(app, host="127.0.0.1")


def tool_config(api: TestServer) -> dict[str, object]:
    connection = ConnectionConfig(
        base_url=str(api.make_url("")),
        allow_networks=["127.0.0.1/32"],  # type: ignore[list-item]
    )
    order = ToolConfig.model_validate(
        {
            "description": "One order by its number, with the delivery postcode.",
            "connection": "shop",
            "path": "/orders/{order_id}",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}, "postcode": {"type": "string"}},
                "required": ["order_id"],
            },
        }
    )
    return {"connections": {"shop": connection}, "tools": {"get_order": order}}


async def run(
    args: argparse.Namespace, data_dir: Path, port: int, tool_ms: float
) -> tuple[list[TurnResult], list[float]]:
    knowledge = KnowledgeConfig(**({"embedder": args.embedder} if args.embedder else {}))
    api = order_api(tool_ms)
    await api.start_server()
    config = GatewayConfig(
        data_dir=data_dir,
        knowledge=knowledge,
        brain=BrainConfig(
            anthropic_api_key=SecretStr("sk-ant-benchmark"),
            deadline=args.deadline,
            anthropic_base_url=f"http://127.0.0.1:{port}",
        ),
        **(tool_config(api) if tool_ms else {}),  # type: ignore[arg-type]
    )
    try:
        return await answer_all(args, config)
    finally:
        await api.close()


async def answer_all(
    args: argparse.Namespace, config: GatewayConfig
) -> tuple[list[TurnResult], list[float]]:
    async with Runtime.open(config, embedded=True) as runtime:
        sample = [ROOT / "config" / "knowledge"]
        if runtime.knowledge.is_stale(sample):
            started = time.perf_counter()
            runtime.knowledge.ingest(sample)
            print(f"ingested the sample help centre in {time.perf_counter() - started:.1f} s")
        await runtime.knowledge.search("warm up the embedder", k=1)
        searches = time_retrieval(runtime)
        consumer = asyncio.create_task(runtime.bus.consume(runtime.pipeline.handle))
        per_conversation = max(1, args.messages // args.conversations)
        batches = await asyncio.gather(
            *(
                conversation(runtime, n, per_conversation, args.think)
                for n in range(args.conversations)
            )
        )
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    return [result for batch in batches for result in batch], searches


def time_retrieval(runtime: Runtime) -> list[float]:
    """Milliseconds each retrieval took (the answerer's first step, wrapped on this instance):
    on a loaded machine it is what misses the first-response deadline, not the model."""
    seconds: list[float] = []
    retrieve = runtime.answerer.retrieve

    async def timed(message: Inbound, history: Sequence[TranscriptEntry] = ()) -> object:
        started = time.perf_counter()
        try:
            return await retrieve(message, history)
        finally:
            seconds.append((time.perf_counter() - started) * 1000)

    runtime.answerer.retrieve = timed  # type: ignore[method-assign,assignment]
    return seconds


def fake_api(
    port: int, words: int, pace: float, args: argparse.Namespace, tool_ms: float
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.fakes.anthropic_api", "--port", str(port)]
    command += ["--words", str(words), "--tokens-per-second", str(pace)]
    command += ["--first-token", str(args.first_token)]
    if tool_ms:
        command += ["--tool", "get_order"]
    if args.stall:
        command += ["--stall", str(args.stall)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def row(
    words: int, pace: float, tool_ms: float, results: list[TurnResult], searches: list[float]
) -> str:
    first = [r.first_response_ms or r.latency_ms for r in results]
    complete = [r.latency_ms for r in results]
    kinds = Counter(kind(result) for result in results)
    held = sum(1 for r in results if len(r.replies) > 1)
    return (
        f"| {words} words | {pace:g} tokens/s | {f'{tool_ms:g} ms' if tool_ms else 'none'} "
        f"| {percentile(first, 50):.0f} ms "
        f"| {percentile(first, 95):.0f} ms | {percentile(complete, 95):.0f} ms "
        f"| {kinds[MODEL] / len(results):.1%} | {held / len(results):.1%} "
        f"| {percentile(searches, 95):.0f} ms |"
    )


def parse_cost() -> str:
    """What reading the streamed tool input costs: jiter's partial parse of the call so far at
    every delta (as brain/claude.py does), against one parse of the whole call."""
    call = json.dumps(decision(reply=simulated_reply(45)).input)
    deltas = [call[: i + 12] for i in range(0, len(call), 12)]  # 3 tokens a delta
    per_call = timeit.timeit(
        lambda: [jiter.from_json(d.encode(), partial_mode="trailing-strings") for d in deltas],
        number=200,
    )
    once = timeit.timeit(lambda: jiter.from_json(call.encode()), number=200)
    return (
        f"tool input parsed at each of {len(deltas)} deltas: {per_call / 200 * 1e6:.0f} us a "
        f"45-word answer, against {once / 200 * 1e6:.1f} us parsed once whole"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200, help="per row")
    parser.add_argument("--words", type=int, nargs="*", default=[20, 45])
    parser.add_argument("--pace", type=float, nargs="*", default=[60.0, 120.0], help="tokens/s")
    parser.add_argument("--first-token", type=float, default=0.6, help="seconds")
    parser.add_argument("--stall", type=float, default=None, help="the model stalls this long")
    parser.add_argument("--data-dir", type=Path, help="a knowledge base to reuse (default: temp)")
    parser.add_argument("--embedder", help="knowledge.embedder (default: the config default)")
    parser.add_argument("--deadline", type=float, default=2.0, help="brain.deadline, seconds")
    parser.add_argument(
        "--tool-ms",
        type=float,
        nargs="*",
        default=[0.0],
        help="rows with a tool call of this many ms before each answer (0: no tool)",
    )
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="each customer waits 0..THINK s (uniform) before each message; 0: all at once",
    )
    args = parser.parse_args()
    os.environ.pop("ANTHROPIC_API_KEY", None)
    configure_logging("error", "console", [])
    rows, notes = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        for words, pace, tool_ms in itertools.product(args.words, args.pace, args.tool_ms):
            port = free_port()
            fake = fake_api(port, words, pace, args, tool_ms)
            try:
                asyncio.run(wait_listening(port, fake))
                results, searches = asyncio.run(
                    run(args, args.data_dir or Path(temporary), port, tool_ms)
                )
            finally:
                fake.terminate()
                fake.wait(timeout=10)
            rows.append(row(words, pace, tool_ms, results, searches))
            outcomes = Counter(kind(result) for result in results).most_common()
            notes.append(
                f"{words} words at {pace:g} tokens/s, tool {tool_ms:g} ms: "
                + ", ".join(f"{name} {n / len(results):.1%}" for name, n in outcomes)
            )
    model = f"stalled {args.stall:g} s" if args.stall else f"first token {args.first_token:g} s"
    print(
        f"{args.messages} messages a row, {args.conversations} concurrent conversations, web "
        f"chat (streaming), model {model}, think 0..{args.think:g} s, brain.deadline "
        f"{args.deadline:g} s, {time.perf_counter() - started:.0f} s wall, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine)"
    )
    print(
        "| answer | output rate | tool call | first visible p50 | first visible p95 | complete p95 "
        "| from the model | holding line | retrieval p95 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    for note in notes:
        print(f"  {note}")
    print(parse_cost())


if __name__ == "__main__":
    main()
