"""The embedder in a child process (`knowledge.embedder_process`): the same vectors as in the
caller's process, a child killed mid-life is replaced, and no child outlives its owner: not
after `close`, not after a `gateway worker` stops on SIGTERM, not after its parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from brain.embedder import (
    DEFAULT_EMBEDDER,
    ChildProcessEmbedder,
    E5SmallEmbedder,
    Embedder,
    load_embedder,
)
from brain.knowledge import KnowledgeBase
from tests.test_embedder import USE_TEXTS

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [*USE_TEXTS, ""]  # four languages and lengths, and an empty text


@pytest.fixture(scope="module")
def in_process() -> Embedder:
    return load_embedder(DEFAULT_EMBEDDER)


@pytest.fixture(scope="module")
def child() -> Iterator[ChildProcessEmbedder]:
    embedder = ChildProcessEmbedder(DEFAULT_EMBEDDER)
    yield embedder
    embedder.close()


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_child_gives_the_same_vectors_as_the_caller_s_process(
    child: ChildProcessEmbedder, in_process: Embedder
) -> None:
    vectors = child.embed(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), in_process.dimensions) == (5, child.dimensions)
    np.testing.assert_allclose(vectors, in_process.embed(TEXTS), atol=1e-6)
    assert child.embed([]).shape == (0, child.dimensions)
    assert child.name == in_process.name


def test_a_killed_child_is_replaced_and_the_request_answered(
    child: ChildProcessEmbedder, in_process: Embedder
) -> None:
    child.start()
    first = child.pid
    assert first is not None and alive(first)
    os.kill(first, signal.SIGKILL)
    with capture_logs() as logs:
        vectors = child.embed(TEXTS[:2])
    np.testing.assert_allclose(vectors, in_process.embed(TEXTS[:2]), atol=1e-6)
    assert child.pid not in (None, first)
    assert not alive(first)
    died = [log for log in logs if log["event"] == "embedder.child_died"]
    assert died and died[0]["exitcode"] == -signal.SIGKILL


def test_the_child_embeds_queries_and_passages_each_as_told() -> None:
    e5 = ChildProcessEmbedder(E5SmallEmbedder.name)
    try:
        in_process = E5SmallEmbedder()
        for kind in ("query", "passage"):
            np.testing.assert_allclose(
                e5.embed(TEXTS, kind), in_process.embed(TEXTS, kind), atol=1e-6
            )
    finally:
        e5.close()


def test_close_stops_the_child_and_a_later_call_starts_one_again() -> None:
    embedder = ChildProcessEmbedder(DEFAULT_EMBEDDER)
    assert embedder.pid is None  # nothing runs before it is needed
    embedder.start()
    pid = embedder.pid
    assert pid is not None and alive(pid)
    embedder.close()
    assert embedder.pid is None and not alive(pid)
    assert embedder.embed(["again"]).shape == (1, embedder.dimensions)
    embedder.close()


def test_the_child_exits_when_its_parent_is_killed() -> None:
    code = (
        "import sys, time; from brain.embedder import load_embedder; "
        "e = load_embedder('use-multilingual', child_process=True); "
        "print('child', e.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    assert parent.stdout is not None
    with parent.stdout:
        try:
            lines = (line.split() for line in parent.stdout)
            pid = next(int(words[1]) for words in lines if words[:1] == ["child"])
            assert alive(pid)
        finally:
            parent.kill()
            parent.wait()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the embedder's child outlived its killed parent"


async def test_a_knowledge_base_embeds_in_its_child_and_stops_it_on_close(
    tmp_path: Path, sample_data_dir: Path
) -> None:
    kb = KnowledgeBase(sample_data_dir, embedder_process=True)
    try:
        passages = await kb.search("How much does shipping to Canada cost?", k=2)
        assert passages and "shipping" in passages[0].source
        child = kb._embedder
        assert (
            isinstance(child, ChildProcessEmbedder) and child.pid is not None and alive(child.pid)
        )
        pid = child.pid
        # The intents' entry point reuses the search's vector, and embeds new texts there too.
        vectors = await kb.embed(["How much does shipping to Canada cost?", "refund"])
        assert vectors.shape == (2, child.dimensions)
    finally:
        kb.close()
    assert not alive(pid)


def test_a_worker_stopped_with_sigterm_leaves_no_embedder_behind(
    redis_url: str, sample_data_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"data_dir: {sample_data_dir}\n"
        "knowledge: {sources: [], embedder_process: true}\nlogging: {level: info, format: json}\n"
    )
    log = tmp_path / "worker.log"
    env = {**os.environ, "REDIS_URL": redis_url, "GATEWAY_CONFIG": str(config)}
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "gateway.app", "worker"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        # The worker loads the model (in its child) before it consumes.
        deadline = time.monotonic() + 90
        while "gateway.started" not in log.read_text() and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
        children = _children(worker.pid)
        assert len(children) == 1, log.read_text()
        worker.send_signal(signal.SIGTERM)
        # Generous: on a loaded machine the interpreter's own teardown can take a while.
        assert worker.wait(timeout=120) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert not alive(children[0]), "the embedder's child outlived the worker"


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
