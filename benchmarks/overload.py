"""Open-loop REST load on a real gateway: latency, rejections, deadline escalations, capacity.

The gateway runs as subprocess(es) on free loopback ports, with the Plausible help centre
ingested into a temporary data dir: `gateway serve` (one process), or with `--workers N` a
redis-server, `gateway web` and N `gateway worker`. The client sends `POST /api/messages` on an
open-loop schedule (fixed interval, or Poisson with `--poisson`): a request leaves at its time
whether or not earlier ones were answered, as customers do. Each message is a new conversation.

Per rate it prints p50/p95/p99 latency (every response, rejections included), the answered
throughput, the share of 429/503 (admission control), of 202 (still processing at
`pipeline.reply_timeout`), of client time-outs, and of deadline escalations (`model_unavailable`:
the holding reply). Then, once the load's responses are in, one message on an idle server: its
latency and outcome say whether work was left behind (a backlog the gateway is still embedding).
The capacity is the highest rate with p95 <= 500 ms, no deadline escalation and no rejection,
at which every lower rate tried was served too (rates are tried in the order given).

    python benchmarks/overload.py                              # gateway serve, 25..400 msg/s
    python benchmarks/overload.py --workers 2                  # gateway web + 2 workers, Redis
    python benchmarks/overload.py --rates 100,200 --seconds 20 --poisson
    python benchmarks/overload.py --code /tmp/main-export      # another checkout's code

The load client shares the machine's cores with the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KB = Path("/work/shared/corpora/plausible-docs")
QUESTIONS = (
    "How do I add a goal for a custom event?",
    "Is Plausible GDPR compliant without a cookie banner?",
    "Why does my dashboard show no visitors?",
    "How can I exclude my own visits from the stats?",
    "Can I import my Google Analytics data?",
    "How do I share my dashboard with a client?",
    "What happens when I go over my monthly pageview limit?",
    "How do I track outbound link clicks?",
)
P95_TARGET_MS = 500.0
IDLE_PROBES = 3


@dataclass
class Outcome:
    """One request: its latency and what came back."""

    latency_ms: float
    kind: str  # answered | deadline | escalated | rejected | processing | timeout | error


@dataclass
class Level:
    rate: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0
    after_ms: float = 0.0
    after_kind: str = ""
    load: float = 0.0  # the machine's 1-minute load average when the level ended

    def share(self, *kinds: str) -> float:
        return sum(o.kind in kinds for o in self.outcomes) / max(len(self.outcomes), 1)

    def cut(self, q: int) -> float:
        latencies = [o.latency_ms for o in self.outcomes]
        if len(latencies) < 2:
            return latencies[0] if latencies else 0.0
        return statistics.quantiles(latencies, n=100, method="inclusive")[q - 1]

    @property
    def served(self) -> bool:
        """Within capacity: p95 on target, nobody held at the deadline, nobody turned away."""
        return (
            self.cut(95) <= P95_TARGET_MS
            and self.share("deadline", "timeout", "processing", "error") == 0
            and self.share("rejected") == 0
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def schedule(rate: float, seconds: float, poisson: bool, seed: int) -> Iterator[float]:
    """Send times from 0, fixed interval or exponential gaps, at most `seconds` long."""
    rng = random.Random(seed)
    at = 0.0
    while at < seconds:
        yield at
        at += rng.expovariate(rate) if poisson else 1.0 / rate


async def post(session: aiohttp.ClientSession, url: str, n: int, limit: float) -> Outcome:
    payload = {"conversation_id": f"load-{n}", "text": QUESTIONS[n % len(QUESTIONS)]}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit), session.post(url, json=payload) as response:
            body = await response.json(content_type=None)
            status = response.status
    except TimeoutError:
        return Outcome((time.perf_counter() - started) * 1000, "timeout")
    except aiohttp.ClientError:
        return Outcome((time.perf_counter() - started) * 1000, "error")
    latency = (time.perf_counter() - started) * 1000
    if status in (429, 503):
        return Outcome(latency, "rejected")
    if status == 202:
        return Outcome(latency, "processing")
    if status != 200:
        return Outcome(latency, "error")
    decision = body["decision"]
    if decision["reason"] == "model_unavailable":
        return Outcome(latency, "deadline")
    return Outcome(latency, "answered" if decision["action"] == "answer" else "escalated")


async def run_level(
    session: aiohttp.ClientSession, url: str, level: Level, args: argparse.Namespace, base: int
) -> None:
    started = time.perf_counter()
    tasks = []
    for n, at in enumerate(schedule(level.rate, level.seconds, args.poisson, base)):
        if n >= args.max_requests:
            break
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(session, url, base + n, args.timeout)))
    level.outcomes = list(await asyncio.gather(*tasks))
    level.wall = time.perf_counter() - started
    level.load = os.getloadavg()[0]
    # The load has stopped and every response is in (or timed out): is the server idle now?
    probe = await post(session, url, base + len(tasks), args.timeout)
    level.after_ms, level.after_kind = probe.latency_ms, probe.kind


async def idle_latency(session: aiohttp.ClientSession, url: str) -> list[Outcome]:
    """Once a message is answered promptly (workers may still be starting when the web process
    is ready), the latency of a few more, one at a time."""
    deadline = time.monotonic() + 120
    while (await post(session, url, 9_999_999, 30.0)).latency_ms > P95_TARGET_MS:
        if time.monotonic() > deadline:
            raise SystemExit("the gateway never answered within the target")
    return [await post(session, url, 10_000_000 + n, 30.0) for n in range(IDLE_PROBES)]


async def wait_healthy(port: int, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 300
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise SystemExit(f"{process.args!r} exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.5)
    raise SystemExit("the gateway did not become ready")


def start(args: argparse.Namespace, workdir: Path, port: int) -> list[subprocess.Popen[bytes]]:
    """The gateway's processes (a redis-server first with --workers), knowledge base ingested."""
    config = workdir / "gateway.yaml"
    pipeline = f"pipeline: {{{args.pipeline}}}\n" if args.pipeline else ""
    config.write_text(
        f"data_dir: {args.data_dir or workdir / 'data'}\nknowledge: {{sources: [{args.kb}]}}\n"
        f"server: {{host: 127.0.0.1}}\nlogging: {{level: error}}\n{pipeline}"
    )
    env = {**os.environ, "PORT": str(port), "GATEWAY_CONFIG": str(config)}
    env["PYTHONPATH"] = str(args.code)
    for name in ("GATEWAY_API_TOKEN", "REDIS_URL", "ANTHROPIC_API_KEY", "CHROMA_URL"):
        env.pop(name, None)
    # The CLI moved into gateway/app/; an older checkout (--code) has it at gateway/.
    entry = "gateway.app" if (args.code / "gateway" / "app" / "__main__.py").exists() else "gateway"
    gateway = [sys.executable, "-m", entry]
    quiet = {"cwd": args.code, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if not args.workers:
        return [subprocess.Popen([*gateway, "serve"], env=env, **quiet)]
    redis_port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
    )
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    subprocess.run([*gateway, "kb", "ingest"], env=env, check=True, **quiet)  # the release step
    processes = [redis, subprocess.Popen([*gateway, "web"], env=env, **quiet)]
    for _ in range(args.workers):
        processes.append(subprocess.Popen([*gateway, "worker"], env=env, **quiet))
    return processes


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def report(args: argparse.Namespace, idle: list[Outcome], levels: list[Level]) -> None:
    where = f"gateway web + {args.workers} worker(s), Redis" if args.workers else "gateway serve"
    print(
        f"\n{where}, code {args.code}, {os.cpu_count()} cores, "
        f"{'Poisson' if args.poisson else 'fixed-interval'} arrivals, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("idle: " + ", ".join(f"{o.latency_ms:.0f} ms ({o.kind})" for o in idle))
    header = (
        f"{'rate/s':>7} {'sent':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'answered/s':>10} "
        f"{'429/503':>8} {'deadline':>8} {'202':>6} {'timeout':>7} {'after ms':>9} {'after':>10}"
    )
    print(header)
    print("-" * len(header))
    for level in levels:
        answered = sum(o.kind in ("answered", "escalated") for o in level.outcomes) / level.wall
        print(
            f"{level.rate:>7g} {len(level.outcomes):>6} {level.cut(50):>8.0f} "
            f"{level.cut(95):>8.0f} {level.cut(99):>8.0f} {answered:>10.1f} "
            f"{level.share('rejected'):>8.1%} {level.share('deadline'):>8.1%} "
            f"{level.share('processing'):>6.1%} {level.share('timeout'):>7.1%} "
            f"{level.after_ms:>9.0f} {level.after_kind:>10} {level.load:>5.1f}"
        )
    kinds = Counter(o.kind for level in levels for o in level.outcomes)
    print("outcomes: " + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()))
    # A rate counts only when every lower rate tried was served too: on a shared machine a lucky
    # level above a failed one says more about the neighbours' load than about the gateway.
    served = list(itertools.takewhile(lambda level: level.served, levels))
    capacity = f"{served[-1].rate:g} msg/s" if served else "below the lowest rate tried"
    also = [f"{level.rate:g}" for level in levels[len(served) :] if level.served]
    print(
        f"capacity (highest rate with p95 <= {P95_TARGET_MS:.0f} ms, no deadline escalation, "
        f"no rejection, and so every lower rate): {capacity}"
        + (f"; served again at {', '.join(also)} msg/s" if also else "")
    )


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as temporary:
        processes = start(args, Path(temporary), port)
        try:
            await wait_healthy(port, processes)
            url = f"http://127.0.0.1:{port}/api/messages"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                idle = await idle_latency(session, url)
                levels = []
                for number, rate in enumerate(args.rates):
                    level = Level(rate, args.seconds)
                    await run_level(session, url, level, args, number * 1_000_000)
                    levels.append(level)
                    print(
                        f"{rate:g}/s: p95 {level.cut(95):.0f} ms, "
                        f"after {level.after_ms:.0f} ms ({level.after_kind})",
                        flush=True,
                    )
                    await asyncio.sleep(args.pause)
        finally:
            stop(processes)
    report(args, idle, levels)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [float(rate) for rate in text.split(",")],
        default=[25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0],
        help="messages per second, comma-separated, tried in order",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per rate")
    parser.add_argument("--max-requests", type=int, default=5000, help="per rate at most")
    parser.add_argument("--poisson", action="store_true", help="exponential gaps")
    parser.add_argument("--timeout", type=float, default=35.0, help="client time-out, seconds")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rates")
    parser.add_argument("--workers", type=int, default=0, help="with Redis; 0: gateway serve")
    parser.add_argument("--kb", type=Path, default=KB, help="the help centre to ingest")
    parser.add_argument("--data-dir", type=Path, help="a data dir to reuse (default: temp)")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--pipeline", default="", help="extra pipeline keys, YAML flow style")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
