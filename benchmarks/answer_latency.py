"""End-to-end answer latency with the Claude answerer against a simulated Claude.

The fake Messages API (tests/fakes/anthropic_api.py) runs in its own process at the pace of a
real model: first token after 0.6 s, then 60 tokens/s. The gateway runs in this process on
the sample help centre with the in-process bus: each message goes bus -> pipeline (dedupe,
state, concurrent retrieval, escalation rules, Claude, policy guard, send). Conversations run
in parallel, each sending its messages one after the other, like customers: each waits a
random 0..--think seconds (default 2) before each message, so arrivals spread out as real
traffic does; `--think 0` sends every conversation's next message the instant its reply lands
(all 50 in lockstep, the worst case for the batched retrieval).

Latency is the pipeline's own figure: from the message's receipt to its reply being sent.

    python benchmarks/answer_latency.py                  # 50 conversations, 200 messages
    python benchmarks/answer_latency.py --stall 10       # a model that never answers in time
    python benchmarks/answer_latency.py --embedder minilm  # another knowledge.embedder
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brain.config import BrainConfig, KnowledgeConfig  # noqa: E402
from gateway.app.runtime import Runtime  # noqa: E402
from gateway.app.settings import GatewayConfig  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.message import Action, Inbound, Reason, TurnResult, conversation_key  # noqa: E402

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


def kind(result: TurnResult) -> str:
    decision = result.decision
    if decision.reason is Reason.MODEL_UNAVAILABLE:
        return "holding reply + escalation (model_unavailable)"
    if "Claude unavailable" in decision.explanation:
        return "answered offline (fallback)"
    if decision.action is Action.ANSWER:
        return "answered by Claude"
    return f"escalated ({decision.reason.value if decision.reason else '-'})"


async def conversation(runtime: Runtime, number: int, count: int, think: float) -> list[TurnResult]:
    results = []
    pause = random.Random(number)
    for turn in range(count):
        await asyncio.sleep(pause.uniform(0, think))  # the customer reads, then types
        message = Inbound(
            channel="rest",
            conversation=conversation_key("rest", f"bench-{number}"),
            sender=f"customer-{number}",
            text=QUESTIONS[(number + turn) % len(QUESTIONS)],
            provider_message_id=f"bench-{number}-{turn}",
        )
        with runtime.results.expect(message.id) as result:
            await runtime.bus.publish(message)
            results.append(await result)
    return results


async def run(
    args: argparse.Namespace, data_dir: Path, port: int, fake: subprocess.Popen[bytes]
) -> None:
    await wait_listening(port, fake)
    knowledge = KnowledgeConfig(**({"embedder": args.embedder} if args.embedder else {}))
    config = GatewayConfig(
        data_dir=data_dir,
        knowledge=knowledge,
        brain=BrainConfig(
            anthropic_api_key=SecretStr("sk-ant-benchmark"),
            deadline=args.deadline,
            anthropic_base_url=f"http://127.0.0.1:{port}",
        ),
    )
    configure_logging("error", "console", [])
    async with Runtime.open(config, embedded=True) as runtime:
        sample = [ROOT / "config" / "knowledge"]
        if runtime.knowledge.is_stale(sample):
            started = time.perf_counter()
            runtime.knowledge.ingest(sample)
            print(f"ingested the sample help centre in {time.perf_counter() - started:.1f} s")
        await runtime.knowledge.search("warm up the embedder", k=1)
        stages = time_stages(runtime)
        consumer = asyncio.create_task(runtime.bus.consume(runtime.pipeline.handle))
        per_conversation = max(1, args.messages // args.conversations)
        started = time.perf_counter()
        batches = await asyncio.gather(
            *(
                conversation(runtime, n, per_conversation, args.think)
                for n in range(args.conversations)
            )
        )
        wall = time.perf_counter() - started
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    report(args, [result for batch in batches for result in batch], wall, stages)


def time_stages(runtime: Runtime) -> dict[str, list[float]]:
    """Seconds spent in retrieval and in the decision (rules, Claude, fallback), per message:
    the answerer's two steps, wrapped on this instance only."""
    stages: dict[str, list[float]] = {"retrieval": [], "decision": []}
    answerer = runtime.answerer

    def timed(step: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Awaitable[Any]]:
        async def run(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await step(*args)
            finally:
                stages[name].append(time.perf_counter() - started)

        return run

    answerer.retrieve = timed(answerer.retrieve, "retrieval")  # type: ignore[method-assign]
    answerer.decide = timed(answerer.decide, "decision")  # type: ignore[method-assign]
    return stages


def report(
    args: argparse.Namespace,
    results: list[TurnResult],
    wall: float,
    stages: dict[str, list[float]],
) -> None:
    latencies = sorted(result.latency_ms for result in results)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    model = f"stalled {args.stall:g} s" if args.stall else "simulated (0.6 s, 60 tokens/s)"
    print(
        f"{len(results)} messages, {args.conversations} concurrent conversations, "
        f"model {model}, embedder {args.embedder or 'default'}, think 0..{args.think:g} s, "
        f"{wall:.1f} s wall, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"latency receipt -> reply: p50 {cuts[49]:.0f} ms, p95 {cuts[94]:.0f} ms, "
        f"p99 {cuts[98]:.0f} ms, max {latencies[-1]:.0f} ms"
    )
    for name, seconds in stages.items():
        ordered = sorted(seconds)
        p50, p95 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.95)]
        print(f"  {name}: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    within = sum(1 for latency in latencies if latency <= 2000) / len(latencies)
    print(f"within 2.0 s: {within:.1%} (brain.deadline {args.deadline:g} s)")
    for outcome, count in Counter(kind(result) for result in results).most_common():
        print(f"  {outcome}: {count} ({count / len(results):.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--stall", type=float, default=None, help="the model stalls this long")
    parser.add_argument("--data-dir", type=Path, help="a knowledge base to reuse (default: temp)")
    parser.add_argument("--embedder", help="knowledge.embedder (default: the config default)")
    parser.add_argument("--deadline", type=float, default=2.0, help="brain.deadline, seconds")
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="each customer waits 0..THINK s (uniform) before each message; 0: all at once",
    )
    args = parser.parse_args()
    os.environ.pop("ANTHROPIC_API_KEY", None)
    port = free_port()
    command = [sys.executable, "-m", "tests.fakes.anthropic_api", "--port", str(port)]
    if args.stall:
        command += ["--stall", str(args.stall)]
    fake = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory() as temporary:
            asyncio.run(run(args, args.data_dir or Path(temporary), port, fake))
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()
