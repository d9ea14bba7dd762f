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
at which every lower rate tried was served too (rates are tried in the order given). The CPU
the gateway's processes (and their children: Redis, the embedder's process) spent per answered
message says what the load cost, even when the neighbours' load moves the latencies.

Several sides (a checkout, and config keys to set) run side by side: each side's gateway is
started once, and at each rate the sides take turns (the order alternates from rate to rate),
so a neighbour's load falls on both alike.

    python benchmarks/overload.py                              # gateway serve, 25..400 msg/s
    python benchmarks/overload.py --workers 2                  # gateway web + 2 workers, Redis
    python benchmarks/overload.py --rates 100,200 --seconds 20 --poisson
    python benchmarks/overload.py --side before=/tmp/main-export --side after=.
    python benchmarks/overload.py --side thread=. \
        --side "child=.;{knowledge: {embedder_process: true}}"  # the same code, two configs

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
import yaml

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
    cpu: float = 0.0  # CPU seconds the gateway's processes spent on the level

    @property
    def answered(self) -> int:
        return sum(o.kind in ("answered", "escalated") for o in self.outcomes)

    @property
    def cpu_ms_per_answer(self) -> float:
        return 1000 * self.cpu / max(self.answered, 1)

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


@dataclass
class Side:
    """One gateway under test: a checkout's code and the config keys set for it."""

    label: str
    code: Path
    overrides: dict[str, object]
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    idle: list[Outcome] = field(default_factory=list)
    levels: list[Level] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/messages"


def parse_side(text: str) -> Side:
    """LABEL=PATH, or LABEL=PATH;YAML (a mapping of config keys, e.g. `{knowledge: {...}}`)."""
    label, _, rest = text.partition("=")
    path, _, overrides = rest.partition(";")
    if not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=PATH or LABEL=PATH;YAML")
    mapping = yaml.safe_load(overrides) if overrides else {}
    if not isinstance(mapping, dict):
        raise argparse.ArgumentTypeError(f"{overrides!r}: not a YAML mapping")
    return Side(label, Path(path).resolve(), mapping)


def merged(base: dict[str, object], extra: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for key, value in extra.items():
        below = out.get(key)
        if isinstance(below, dict) and isinstance(value, dict):
            out[key] = merged(below, value)
        else:
            out[key] = value
    return out


def cpu_seconds(processes: list[subprocess.Popen[bytes]]) -> float:
    """User and system CPU of the processes and their live descendants (Linux /proc)."""
    total, seen, todo = 0.0, set(), [process.pid for process in processes]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return total


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
    session: aiohttp.ClientSession, side: Side, level: Level, args: argparse.Namespace, base: int
) -> None:
    url = side.url
    cpu_before = cpu_seconds(side.processes)
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
    level.cpu = cpu_seconds(side.processes) - cpu_before
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


def start(args: argparse.Namespace, side: Side, workdir: Path) -> list[subprocess.Popen[bytes]]:
    """The side's processes (a redis-server first with --workers), knowledge base ingested."""
    config = workdir / "gateway.yaml"
    if args.data_dir:  # a copy each: two embedded Chromas must not share their files
        shutil.copytree(args.data_dir, workdir / "data")
    settings: dict[str, object] = {
        "data_dir": str(workdir / "data"),
        "knowledge": {"sources": [str(args.kb)]},
        "server": {"host": "127.0.0.1"},
        "logging": {"level": "error"},
    }
    settings = merged(merged(settings, args.config), side.overrides)
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PORT": str(side.port), "GATEWAY_CONFIG": str(config)}
    env["PYTHONPATH"] = str(side.code)
    for name in ("GATEWAY_API_TOKEN", "REDIS_URL", "ANTHROPIC_API_KEY", "CHROMA_URL"):
        env.pop(name, None)
    # The CLI moved into gateway/app/; an older checkout has it at gateway/.
    entry = "gateway.app" if (side.code / "gateway" / "app" / "__main__.py").exists() else "gateway"
    gateway = [sys.executable, "-m", entry]
    quiet = {"cwd": side.code, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
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


def report(args: argparse.Namespace, side: Side) -> str:
    """Print the side's table; return its capacity line."""
    where = f"gateway web + {args.workers} worker(s), Redis" if args.workers else "gateway serve"
    print(
        f"\n{side.label}: {where}, code {side.code}"
        + (f", config {side.overrides}" if side.overrides else "")
        + f", {os.cpu_count()} cores, {'Poisson' if args.poisson else 'fixed-interval'} arrivals"
    )
    print("idle: " + ", ".join(f"{o.latency_ms:.0f} ms ({o.kind})" for o in side.idle))
    header = (
        f"{'rate/s':>7} {'sent':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'answered/s':>10} "
        f"{'429/503':>8} {'deadline':>8} {'202':>6} {'timeout':>7} {'after ms':>9} {'after':>10} "
        f"{'cpu ms/msg':>10} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for level in side.levels:
        print(
            f"{level.rate:>7g} {len(level.outcomes):>6} {level.cut(50):>8.0f} "
            f"{level.cut(95):>8.0f} {level.cut(99):>8.0f} {level.answered / level.wall:>10.1f} "
            f"{level.share('rejected'):>8.1%} {level.share('deadline'):>8.1%} "
            f"{level.share('processing'):>6.1%} {level.share('timeout'):>7.1%} "
            f"{level.after_ms:>9.0f} {level.after_kind:>10} {level.cpu_ms_per_answer:>10.1f} "
            f"{level.load:>5.1f}"
        )
    kinds = Counter(o.kind for level in side.levels for o in level.outcomes)
    print("outcomes: " + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()))
    # A rate counts only when every lower rate tried was served too: on a shared machine a lucky
    # level above a failed one says more about the neighbours' load than about the gateway.
    served = list(itertools.takewhile(lambda level: level.served, side.levels))
    capacity = f"{served[-1].rate:g} msg/s" if served else "below the lowest rate tried"
    also = [f"{level.rate:g}" for level in side.levels[len(served) :] if level.served]
    return f"{side.label}: {capacity}" + (
        f" (served again at {', '.join(also)} msg/s)" if also else ""
    )


def compare(sides: list[Side]) -> None:
    """p95, the first message after the load, and CPU per message, the sides side by side."""
    print("\np95 ms / first message after the load, ms / CPU ms per answered message")
    header = f"{'rate/s':>7}" + "".join(f" | {side.label[:24]:>24}" for side in sides)
    print(header)
    print("-" * len(header))
    for number, level in enumerate(sides[0].levels):
        cells = (
            f"{other.cut(95):.0f} / {other.after_ms:.0f} / {other.cpu_ms_per_answer:.1f}"
            for other in (side.levels[number] for side in sides)
        )
        print(f"{level.rate:>7g}" + "".join(f" | {cell:>24}" for cell in cells))


async def main(args: argparse.Namespace) -> None:
    sides: list[Side] = args.side or [Side("this checkout", ROOT, {})]
    with tempfile.TemporaryDirectory() as temporary:
        try:
            for number, side in enumerate(sides):
                side.port = free_port()
                workdir = Path(temporary) / str(number)
                workdir.mkdir()
                side.processes = start(args, side, workdir)
                await wait_healthy(side.port, side.processes)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                for side in sides:
                    side.idle = await idle_latency(session, side.url)
                for number, rate in enumerate(args.rates):
                    # Alternate who goes first, so neither side always follows the other's load.
                    for side in sides if number % 2 == 0 else sides[::-1]:
                        level = Level(rate, args.seconds)
                        await run_level(session, side, level, args, number * 1_000_000)
                        side.levels.append(level)
                        print(
                            f"{side.label} {rate:g}/s: p95 {level.cut(95):.0f} ms, "
                            f"after {level.after_ms:.0f} ms ({level.after_kind}), "
                            f"{level.cpu_ms_per_answer:.1f} ms CPU per answer",
                            flush=True,
                        )
                        await asyncio.sleep(args.pause)
        finally:
            for side in sides:
                stop(side.processes)
    capacities = [report(args, side) for side in sides]
    if len(sides) > 1:
        compare(sides)
    print(
        f"\ncapacity (highest rate with p95 <= {P95_TARGET_MS:.0f} ms, no deadline escalation, "
        f"no rejection, and so every lower rate), load average now {os.getloadavg()[0]:.1f}:"
    )
    for line in capacities:
        print(f"  {line}")


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
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="a data dir with the KB ingested, copied for each side (default: ingest)",
    )
    parser.add_argument(
        "--side",
        type=parse_side,
        action="append",
        help="LABEL=PATH[;YAML]: a checkout to run, with config keys to set (repeat to compare; "
        "default: this checkout)",
    )
    parser.add_argument(
        "--config",
        type=yaml.safe_load,
        default={},
        help="config keys set on every side, a YAML mapping, e.g. '{pipeline: {max_in_flight: 9}}'",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
