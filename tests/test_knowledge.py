from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import chromadb
import pytest
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from structlog.testing import capture_logs

from brain import knowledge, lexical
from brain.embedder import Embedder, Kind, MiniLMEmbedder
from brain.knowledge import KnowledgeBase

FIXTURES = Path(__file__).parent / "fixtures" / "kb"
INGESTED = {
    "account/reset-password.md",
    "billing.md",
    "opening-hours.txt",
    "returns.html",
    "shipping.mdx",
}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    shutil.copytree(FIXTURES, folder)
    return folder


@pytest.fixture
def kb(tmp_path: Path, embedder: Embedder) -> Iterator[KnowledgeBase]:
    base = KnowledgeBase(tmp_path / "data", embedder=embedder)
    yield base
    base.close()


@contextmanager
def stored(data_dir: Path) -> Iterator[Collection]:
    """The knowledge collection, opened directly with chromadb."""
    settings = Settings(anonymized_telemetry=False)
    with chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=settings) as client:
        yield client.get_collection("knowledge")


def stored_sources(data_dir: Path) -> set[str]:
    with stored(data_dir) as collection:
        metadatas = collection.get(include=["metadatas"])["metadatas"]
    return {str(meta["source"]) for meta in metadatas}


async def top(kb: KnowledgeBase, question: str) -> knowledge.Passage:
    passages = await kb.search(question, k=3)
    assert passages, question
    return passages[0]


async def test_ingested_folder_answers_questions_with_source_and_title(
    kb: KnowledgeBase, docs: Path
) -> None:
    report = kb.ingest([docs])
    assert (report.added, report.updated, report.removed, report.unchanged) == (5, 0, 0, 0)
    assert report.chunks == kb.count() > 0

    refund = await top(kb, "My grinder arrived broken, can I get a refund?")
    assert (refund.source, refund.title) == ("returns.html", "Returns policy")
    assert 0.3 < refund.score <= 1.0
    payment = await top(kb, "Can I pay with PayPal?")
    assert (payment.source, payment.title) == ("billing.md", "Billing and payments")
    password = await top(kb, "I forgot my password")
    assert (password.source, password.title) == ("account/reset-password.md", "Reset password")
    delivery = await top(kb, "How long does delivery to Europe take?")
    assert (delivery.source, delivery.title) == ("shipping.mdx", "Shipping and delivery")


async def test_passages_come_one_per_page_unless_asked(kb: KnowledgeBase, docs: Path) -> None:
    kb.ingest([docs])
    passages = await kb.search("When is the support team available?", k=10)
    assert passages[0].source == "opening-hours.txt"
    assert sorted(passage.source for passage in passages) == sorted(INGESTED)
    every = await kb.search("When is the support team available?", k=10, per_page=None)
    assert len(every) == kb.count()
    assert all(0.0 <= passage.score <= 1.0 for passage in every)
    assert all(passage.found_by for passage in every)


def test_hidden_files_and_licences_are_not_ingested(
    kb: KnowledgeBase, docs: Path, tmp_path: Path
) -> None:
    kb.ingest([docs])
    assert stored_sources(tmp_path / "data") == INGESTED


def test_symlinks_out_of_the_folder_are_not_followed(
    kb: KnowledgeBase, docs: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "private").mkdir(parents=True)
    (outside / "secrets.md").write_text("# Secrets\n\nThe root password is hunter2.\n")
    (outside / "private" / "notes.md").write_text("# Notes\n\nThe safe code is 1234.\n")
    (docs / "linked-secrets.md").symlink_to(outside / "secrets.md")
    (docs / "linked-folder").symlink_to(outside / "private", target_is_directory=True)
    (docs / "billing-again.md").symlink_to(docs / "billing.md")  # inside: still ingested

    with capture_logs() as logs:
        kb.ingest([docs])

    assert stored_sources(tmp_path / "data") == INGESTED | {"billing-again.md"}
    skipped = [
        entry["path"] for entry in logs if entry["event"] == "knowledge.link_outside_skipped"
    ]
    assert skipped == ["linked-secrets.md"]


def test_metadata_names_root_source_title_heading_and_hash(
    kb: KnowledgeBase, docs: Path, tmp_path: Path
) -> None:
    kb.ingest([docs])
    with stored(tmp_path / "data") as collection:
        found = collection.get(where={"source": "returns.html"}, include=["metadatas"])
    metadatas = found["metadatas"]
    assert {meta["root"] for meta in metadatas} == {str(docs.resolve())}
    assert {meta["title"] for meta in metadatas} == {"Returns policy"}
    assert "Returns and refunds" in {meta["heading"] for meta in metadatas}
    assert {len(str(meta["sha"])) for meta in metadatas} == {64}


async def test_changed_file_is_reembedded_and_the_others_skipped(
    kb: KnowledgeBase, docs: Path
) -> None:
    kb.ingest([docs])
    billing = docs / "billing.md"
    billing.write_text(billing.read_text() + "\n## Seashells\n\nWe now accept seashells too.\n")
    assert kb.is_stale([docs])

    report = kb.ingest([docs])
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 1, 0, 4)
    assert not kb.is_stale([docs])
    passage = await top(kb, "Do you take seashells as payment?")
    assert passage.source == "billing.md"
    assert "seashells" in passage.text


async def test_deleted_file_chunks_are_removed(
    kb: KnowledgeBase, docs: Path, tmp_path: Path
) -> None:
    kb.ingest([docs])
    (docs / "returns.html").unlink()
    assert kb.is_stale([docs])

    report = kb.ingest([docs])
    assert (report.removed, report.unchanged) == (1, 4)
    assert stored_sources(tmp_path / "data") == INGESTED - {"returns.html"}
    passages = await kb.search("My grinder arrived broken, can I get a refund?", k=10)
    assert "returns.html" not in {passage.source for passage in passages}


def test_unchanged_reingest_does_not_load_the_model(
    docs: Path, tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = KnowledgeBase(tmp_path / "data", embedder=embedder)
    first.ingest([docs])
    first.close()

    def no_model(name: str) -> None:
        raise AssertionError(f"the model {name} was loaded")

    monkeypatch.setattr(knowledge, "load_embedder", no_model)
    second = KnowledgeBase(tmp_path / "data")
    assert not second.is_stale([docs])
    report = second.ingest([docs])
    second.close()
    assert (report.unchanged, report.chunks) == (5, 0)


def test_a_file_with_missing_chunks_is_reingested(
    kb: KnowledgeBase, docs: Path, tmp_path: Path
) -> None:
    kb.ingest([docs])
    with stored(tmp_path / "data") as collection:
        ids = collection.get(where={"source": "returns.html"})["ids"]
        collection.delete(ids=ids[:1])
    assert kb.is_stale([docs])
    report = kb.ingest([docs])
    assert (report.updated, report.unchanged, report.chunks) == (1, 4, len(ids))


async def test_empty_knowledge_base_is_stale_and_finds_nothing(
    kb: KnowledgeBase, docs: Path
) -> None:
    assert kb.count() == 0
    assert kb.is_stale([docs])
    assert await kb.search("Can I pay with PayPal?") == []


def test_progress_is_reported_once_per_file_in_order(kb: KnowledgeBase, docs: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    kb.ingest([docs], on_progress=lambda *call: calls.append(call))
    assert calls == [(source, n, 5) for n, source in enumerate(sorted(INGESTED), start=1)]


async def test_single_file_is_ingested_under_its_name(
    kb: KnowledgeBase, docs: Path, tmp_path: Path
) -> None:
    report = kb.ingest([str(docs / "account" / "reset-password.md")])
    assert report.added == 1
    assert stored_sources(tmp_path / "data") == {"reset-password.md"}
    passage = await top(kb, "How do I reset my password?")
    assert (passage.source, passage.title) == ("reset-password.md", "Reset password")


def test_a_file_reached_through_two_paths_is_ingested_once(kb: KnowledgeBase, docs: Path) -> None:
    report = kb.ingest([docs, docs / "billing.md"])
    assert (report.added, report.unchanged) == (5, 0)
    assert kb.count() == report.chunks


def test_bad_paths_get_a_clear_error(kb: KnowledgeBase, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        kb.ingest([tmp_path / "missing"])
    (tmp_path / "logo.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="not a knowledge file"):
        kb.ingest([tmp_path / "logo.png"])


async def test_empty_question_finds_nothing(kb: KnowledgeBase, docs: Path) -> None:
    kb.ingest([docs])
    assert await kb.search("   ") == []


async def test_ping_succeeds_on_embedded_chroma(kb: KnowledgeBase) -> None:
    await kb.ping()


async def test_ping_raises_when_the_chroma_server_is_unreachable(tmp_path: Path) -> None:
    base = KnowledgeBase(tmp_path, chroma_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionError, match="Chroma is unreachable"):
        await base.ping()
    base.close()


# Chroma server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def chroma_url(tmp_path: Path) -> Iterator[str]:
    """`chroma run` (the CLI that ships with chromadb) on a free loopback port."""
    # The CLI sits beside the interpreter in a venv that is not activated (make test).
    beside = Path(sys.executable).parent / "chroma"
    binary = str(beside) if beside.is_file() else shutil.which("chroma")
    if binary is None:
        pytest.fail("the chroma CLI (installed with the chromadb package) was not found")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [binary, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_heartbeat(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for_heartbeat(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"chroma run exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("chroma run did not answer its heartbeat within 30 s")


async def test_chroma_server_ingest_and_search(
    chroma_url: str, docs: Path, tmp_path: Path, embedder: Embedder
) -> None:
    base = KnowledgeBase(tmp_path / "unused", chroma_url=chroma_url, embedder=embedder)
    try:
        await base.ping()
        report = base.ingest([docs])
        assert report.added == 5
        assert base.count() == report.chunks
        passage = await top(base, "Can I pay with PayPal?")
        assert (passage.source, passage.title) == ("billing.md", "Billing and payments")
        assert base.ingest([docs]).unchanged == 5
    finally:
        base.close()
    assert not (tmp_path / "unused").exists()


async def test_workers_on_one_chroma_server_follow_each_others_ingests(
    chroma_url: str, docs: Path, tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = KnowledgeBase(tmp_path / "unused", chroma_url=chroma_url, embedder=embedder)
    reader = KnowledgeBase(tmp_path / "unused", chroma_url=chroma_url, embedder=embedder)
    monkeypatch.setattr(lexical, "RECHECK_SECONDS", 0.0)
    try:
        writer.ingest([docs])
        assert (await top(reader, "Do you take seashells?")).source != "billing.md"
        billing = docs / "billing.md"
        billing.write_text(billing.read_text() + "\n## Seashells\n\nWe accept cowrie shells.\n")
        writer.ingest([docs])
        passage = await top(reader, "cowrie")
        assert passage.source == "billing.md" and "bm25" in passage.found_by
    finally:
        writer.close()
        reader.close()


async def test_an_empty_knowledge_base_answers_without_loading_the_model(tmp_path: Path) -> None:
    knowledge = KnowledgeBase(tmp_path)
    assert await knowledge.search("anything at all?") == []
    assert knowledge._embedder is None  # the model was never loaded
    knowledge.close()


async def test_knowledge_bases_of_one_process_share_one_model(tmp_path: Path, docs: Path) -> None:
    """Something may hold a closed knowledge base (aiohttp caches handlers with their
    application), and a process may open many (a test suite, `gateway test` beside the
    gateway): each must not load and keep a model of its own (130 MB and a second each)."""
    first = KnowledgeBase(tmp_path / "first", embedder="minilm")
    first.ingest([docs])
    first.close()
    second = KnowledgeBase(tmp_path / "second", embedder="minilm")
    second.ingest([docs])
    assert second._embedder is first._embedder
    assert (await first.search("Can I pay with PayPal?", k=1))[0].source == "billing.md"
    first.close()
    second.close()


async def test_concurrent_searches_share_a_batch_and_each_gets_its_own_answer(
    kb: KnowledgeBase, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb.ingest([docs])
    batches: list[int] = []
    embed = kb._embed

    def counting_embed(texts: list[str], kind: Kind):  # type: ignore[no-untyped-def]
        batches.append(len(texts))
        return embed(texts, kind)

    monkeypatch.setattr(kb, "_embed", counting_embed)
    questions = {
        "Can I pay with PayPal?": "billing.md",
        "I forgot my password": "account/reset-password.md",
        "How long does delivery to Europe take?": "shipping.mdx",
    }
    answers = await asyncio.gather(*(kb.search(q, k=1) for q in questions for _ in range(10)))
    expected = [source for source in questions.values() for _ in range(10)]
    assert [passages[0].source for passages in answers] == expected
    assert len(batches) < 30 and sum(batches) == 30  # fewer forward passes than queries


async def test_batches_run_in_lanes_so_a_search_never_waits_behind_a_whole_batch(
    kb: KnowledgeBase, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb.ingest([docs])
    search, running, peak = kb._search, 0, 0
    lock = threading.Lock()

    def counting_search(batch):  # type: ignore[no-untyped-def]
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)  # long enough for the next queries to queue behind it
        try:
            return search(batch)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(kb, "_search", counting_search)
    answers = await asyncio.gather(*(kb.search("I forgot my password", k=1) for _ in range(40)))
    assert {passages[0].source for passages in answers} == {"account/reset-password.md"}
    assert peak == knowledge.SEARCH_LANES


# Switching embedders


async def test_switching_the_embedder_rebuilds_the_collection_in_the_new_vector_space(
    docs: Path, tmp_path: Path, embedder: Embedder
) -> None:
    minilm = KnowledgeBase(tmp_path / "data", embedder=MiniLMEmbedder())
    minilm.ingest([docs])
    assert minilm.vector_space() == f"minilm/{knowledge.VECTORS}"
    minilm.close()

    switched = KnowledgeBase(tmp_path / "data", embedder=embedder)
    assert switched.is_stale([docs])  # files unchanged, but the vectors are another model's
    assert await switched.search("Can I pay with PayPal?") == []  # never mixes vector spaces
    report = switched.ingest([docs])
    assert (report.added, report.unchanged) == (5, 0)
    assert switched.vector_space() == "use-multilingual/text+label/int8"
    assert not switched.is_stale([docs])
    assert (await top(switched, "Can I pay with PayPal?")).source == "billing.md"
    with stored(tmp_path / "data") as collection:
        metadata = dict(collection.metadata)
        assert len(metadata.pop("generation")) == 32  # the lexical indexes' change stamp
        assert metadata == {"embedder": "use-multilingual", "vectors": "text+label/int8"}
        assert len(collection.get(limit=1, include=["embeddings"])["embeddings"][0]) == 512
    switched.close()


@pytest.mark.parametrize(
    ("metadata", "space"),
    [
        (None, "minilm/text"),  # from before vector spaces were recorded
        ({"embedder": "use-multilingual", "vectors": "text+label"}, "use-multilingual/text+label"),
    ],
    ids=["unrecorded", "use-in-float32"],
)
async def test_a_collection_of_an_older_vector_recipe_is_rebuilt(
    tmp_path: Path, docs: Path, embedder: Embedder, metadata: dict[str, str] | None, space: str
) -> None:
    settings = Settings(anonymized_telemetry=False)
    path = str(tmp_path / "data" / "chroma")
    with chromadb.PersistentClient(path=path, settings=settings) as client:
        client.create_collection("knowledge", embedding_function=None, metadata=metadata)
    legacy = KnowledgeBase(tmp_path / "data", embedder=embedder)
    assert legacy.vector_space() == space
    assert legacy.is_stale([docs])
    legacy.ingest([docs])
    assert legacy.vector_space() == "use-multilingual/text+label/int8"
    legacy.close()
