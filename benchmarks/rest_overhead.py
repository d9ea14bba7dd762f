"""REST round trips through the whole gateway against a bare aiohttp handler, side by side.

Each server runs in its own process on this machine; one load client drives both at 1, 10 and
100 concurrent conversations and prints p50/p95/p99 latency, messages/s, and the ratios.

    python benchmarks/rest_overhead.py              # the gateway's own overhead
    python benchmarks/rest_overhead.py --retrieval  # with the offline answerer on the sample KB
    python benchmarks/rest_overhead.py --redis redis://127.0.0.1:6379/0  # Redis bus and store
    python benchmarks/rest_overhead.py --archive   # archive on against archive off, interleaved

Without --retrieval the gateway runs on an empty knowledge base: every message still goes
through the bus, ordering, dedupe, state, transcript, decision, send and metrics, but the
answerer has nothing to search, so what is measured is the gateway itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "How much is the Duo plan in the UK?"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_healthy(port: int, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("server did not become healthy")


async def load(port: int, concurrency: int, per_worker: int, tag: str) -> tuple[list[float], float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(n: int) -> None:
            for i in range(per_worker):
                payload = {"conversation_id": f"{tag}-{concurrency}-{n}", "text": f"{QUESTION} {i}"}
                started = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/api/messages", json=payload) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, len(latencies) / elapsed


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def start_gateway(
    args: argparse.Namespace, port: int, workdir: Path, *, archive: bool = True
) -> subprocess.Popen[bytes]:
    workdir.mkdir(exist_ok=True)
    config = workdir / "gateway.yaml"
    sources = f"[{ROOT / 'config' / 'knowledge'}]" if args.retrieval else "[]"
    config.write_text(
        f"data_dir: {workdir / 'data'}\nknowledge: {{sources: {sources}}}\n"
        "server: {host: 127.0.0.1}\nlogging: {level: warning}\n"
        f"archive: {{enabled: {str(archive).lower()}}}\n"
    )
    env = {**os.environ, "PORT": str(port), "GATEWAY_CONFIG": str(config)}
    env.pop("GATEWAY_API_TOKEN", None)
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)  # the archive on SQLite in the temporary data_dir
    if args.redis:
        env["REDIS_URL"] = args.redis
    command = [sys.executable, "-m", "gateway.app", "serve"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


async def measure(port: int, levels: list[int], requests: int, tag: str) -> dict[int, tuple]:
    await load(port, 10, 20, f"{tag}-warmup")
    results = {}
    for concurrency in levels:
        latencies, rate = await load(port, concurrency, max(requests // concurrency, 5), tag)
        results[concurrency] = (
            percentile(latencies, 50),
            percentile(latencies, 95),
            percentile(latencies, 99),
            rate,
        )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--retrieval", action="store_true", help="answer from the sample KB")
    parser.add_argument("--redis", help="REDIS_URL for the gateway's bus and store")
    parser.add_argument("--requests", type=int, default=2000, help="requests per level")
    parser.add_argument(
        "--archive", action="store_true", help="archive on against off, side by side"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--archive: alternations per level")
    args = parser.parse_args()
    levels = [1, 10, 100]
    if args.archive:
        await compare_archive(args, levels)
        return

    bare_port, gateway_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        bare = subprocess.Popen(  # noqa: ASYNC220 (started once, before any load)
            [sys.executable, str(ROOT / "benchmarks" / "bare_server.py"), str(bare_port)]
        )
        gateway = start_gateway(args, gateway_port, Path(tmp))
        try:
            await wait_healthy(bare_port, bare)
            await wait_healthy(gateway_port, gateway)
            baseline = await measure(bare_port, levels, args.requests, "bare")
            measured = await measure(gateway_port, levels, args.requests, "gw")
        finally:
            for process in (bare, gateway):
                process.terminate()
                process.wait(timeout=20)

    mode = "offline answerer on the sample KB" if args.retrieval else "gateway overhead, empty KB"
    backend = "redis" if args.redis else "in-process"
    print(f"\nREST round trips: {mode}, {backend} bus/store, {os.cpu_count()} cores")
    header = (
        f"{'concurrency':>11} {'server':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'msg/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for concurrency in levels:
        for name, table in (("bare", baseline), ("gateway", measured)):
            p50, p95, p99, rate = table[concurrency]
            print(f"{concurrency:>11} {name:>8} {p50:>8.2f} {p95:>8.2f} {p99:>8.2f} {rate:>8.0f}")
        g, b = measured[concurrency], baseline[concurrency]
        print(
            f"{'':>11} {'ratio':>8} {g[0] / b[0]:>8.1f}x {g[1] / b[1]:>7.1f}x {g[2] / b[2]:>7.1f}x "
            f"{g[3] / b[3]:>8.2f}x"
        )
    p95 = measured[100][1]
    verdict = "met" if p95 < 50 else "MISSED"
    print(f"\ntarget: gateway p95 under 50 ms at 100 concurrent: {p95:.1f} ms ({verdict})")


async def compare_archive(args: argparse.Namespace, levels: list[int]) -> None:
    """Two gateways, archive off and on, loaded in turn `rounds` times per level (so a
    neighbour's load on the shared machine falls on both alike); latencies pooled per side."""
    ports = {"off": free_port(), "on": free_port()}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            side: start_gateway(args, port, Path(tmp) / side, archive=side == "on")
            for side, port in ports.items()
        }
        pooled: dict[tuple[str, int], list[float]] = {}
        rates: dict[tuple[str, int], list[float]] = {}
        try:
            for side, port in ports.items():
                await wait_healthy(port, servers[side])
                await load(port, 10, 20, f"{side}-warmup")
            for concurrency in levels:
                per_worker = max(args.requests // concurrency // args.rounds, 5)
                for round_ in range(args.rounds):
                    for side, port in ports.items():
                        latencies, rate = await load(
                            port, concurrency, per_worker, f"{side}-{round_}"
                        )
                        pooled.setdefault((side, concurrency), []).extend(latencies)
                        rates.setdefault((side, concurrency), []).append(rate)
        finally:
            for process in servers.values():
                process.terminate()
                process.wait(timeout=20)
    backend = "redis" if args.redis else "in-process"
    print(f"\nREST round trips, archive off vs on (SQLite), {backend} bus/store")
    header = (
        f"{'concurrency':>11} {'archive':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'msg/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for concurrency in levels:
        row = {}
        for side in ports:
            values = pooled[(side, concurrency)]
            row[side] = [percentile(values, q) for q in (50, 95, 99)]
            rate = statistics.mean(rates[(side, concurrency)])
            p50, p95, p99 = row[side]
            print(f"{concurrency:>11} {side:>8} {p50:>8.2f} {p95:>8.2f} {p99:>8.2f} {rate:>8.0f}")
        change = (row["on"][1] / row["off"][1] - 1) * 100
        print(f"{'':>11} {'p95 Δ':>8} {change:>+7.1f}%")


if __name__ == "__main__":
    asyncio.run(main())
