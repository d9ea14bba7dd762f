"""The knowledge base: documents chunked, embedded offline and kept in Chroma.

Chroma itself is the manifest: every chunk carries its file's ``root``, ``source``, ``sha``
and ``chunks`` (how many chunks the file has), so a re-ingest compares file hashes with what
is stored and embeds only new or changed files. A file whose stored chunks are incomplete
(an ingest stopped half-way) counts as changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import chromadb
import numpy as np
from chromadb.config import Settings

from brain.chunking import SUFFIXES, Chunk, chunk_text
from brain.embedder import MiniLMEmbedder

BATCH = 200
# Not knowledge: legal boilerplate that sits beside docs (matched on the file stem).
SKIPPED_STEMS = frozenset({"LICENSE", "LICENCE", "COPYING", "NOTICE"})

Progress = Callable[[str, int, int], None]


EMPTY_RECHECK_SECONDS = 5.0
SEARCH_BATCH = 32


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk; ``score`` is the cosine similarity to the query, clamped to 0..1."""

    text: str
    source: str
    title: str
    heading: str
    score: float


@dataclass(slots=True)
class IngestReport:
    """Files added, updated, removed and unchanged; ``chunks`` embedded and stored by this run."""

    added: int
    updated: int
    removed: int
    unchanged: int
    chunks: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _File:
    root: Path
    source: str
    path: Path
    data: bytes
    sha: str

    @property
    def key(self) -> tuple[Path, str]:
        return self.root, self.source


@dataclass(frozen=True, slots=True)
class _Record:
    """One chunk of a file, ready to embed and store."""

    file: _File
    index: int
    count: int
    chunk: Chunk

    @property
    def id(self) -> str:
        key = hashlib.sha256(f"{self.file.root}\n{self.file.source}".encode()).hexdigest()[:24]
        return f"{key}-{self.index}"

    @property
    def metadata(self) -> dict[str, str | int]:
        return {
            "source": self.file.source,
            "title": self.chunk.title,
            "heading": self.chunk.heading,
            "root": str(self.file.root),
            "sha": self.file.sha,
            "chunks": self.count,
        }


@dataclass(frozen=True, slots=True)
class _Scope:
    """One argument of ingest: a folder (whose deleted files are removed) or a single file."""

    root: Path
    files: list[_File]
    is_folder: bool


class KnowledgeBase:
    def __init__(
        self,
        data_dir: Path,
        *,
        chroma_url: str | None = None,
        collection: str = "knowledge",
        embedder: MiniLMEmbedder | None = None,
    ) -> None:
        self._data_dir = Path(data_dir)
        self._chroma_url = chroma_url
        self._collection_name = collection
        self._embedder = embedder
        self._lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self._client: Any = None
        self._collection: Any = None
        self._empty_until = 0.0  # monotonic time until which the collection is known empty
        self._queries: list[tuple[str, int, asyncio.Future[list[Passage]]]] = []
        self._batcher: asyncio.Task[None] | None = None

    def ingest(
        self, paths: Sequence[str | Path], on_progress: Progress | None = None
    ) -> IngestReport:
        """Bring the collection in line with the files; ``on_progress(source, done, total)``."""
        started = time.perf_counter()
        scopes = [_scan(Path(p)) for p in paths]
        total = len({file.key for scope in scopes for file in scope.files})
        report = IngestReport(0, 0, 0, 0, 0, 0.0)
        writer = _Writer(self._store, total, on_progress)
        for scope in scopes:
            self._sync(scope, report, writer)
        report.chunks = writer.finish()
        report.seconds = time.perf_counter() - started
        self._empty_until = 0.0
        return report

    def is_stale(self, paths: Sequence[str | Path]) -> bool:
        if self.count() == 0:
            return True
        for scope in (_scan(Path(p)) for p in paths):
            stored = self._stored(scope.root)
            for file in scope.files:
                if stored.pop(file.source, None) != (file.sha, True):
                    return True
            if scope.is_folder and stored:
                return True
        return False

    def count(self) -> int:
        return self._chroma().count()

    async def search(self, query: str, k: int = 5) -> list[Passage]:
        """The `k` passages closest to `query`, best first.

        Concurrent searches are embedded together: one forward pass reads the model's weights
        once for the whole batch, which is what a query's embedding costs on a CPU. Queries
        that arrive while a batch runs form the next batch, so none waits for company.
        """
        if not query.strip() or k <= 0 or time.monotonic() < self._empty_until:
            return []
        answer: asyncio.Future[list[Passage]] = asyncio.get_running_loop().create_future()
        self._queries.append((query, k, answer))
        batcher = self._batcher
        if batcher is None or batcher.done() or batcher.get_loop() is not answer.get_loop():
            self._batcher = asyncio.create_task(self._run_batches(), name="knowledge:search")
        return await answer

    async def _run_batches(self) -> None:
        while self._queries:
            batch = self._queries[:SEARCH_BATCH]
            del self._queries[:SEARCH_BATCH]
            try:
                found = await asyncio.to_thread(
                    self._search, [query for query, _, _ in batch], max(k for _, k, _ in batch)
                )
            except Exception as error:
                for _, _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for (_, k, answer), passages in zip(batch, found, strict=True):
                if not answer.done():
                    answer.set_result(passages[:k])

    async def ping(self) -> None:
        """Raises ConnectionError when Chroma cannot be reached (for a readiness probe)."""
        await asyncio.to_thread(self._ping)

    def close(self) -> None:
        """Release the Chroma client (its files, or its HTTP connections)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                _close_http_sessions(self._client)
            self._client = self._collection = None

    def _search(self, queries: list[str], k: int) -> list[list[Passage]]:
        collection = self._chroma()
        if collection.count() == 0:
            # Nothing to search: skip the embedding (~10 ms of CPU per query), and the thread
            # hop for a while; re-checked after EMPTY_RECHECK_SECONDS in case another process
            # ingested (a shared Chroma server).
            self._empty_until = time.monotonic() + EMPTY_RECHECK_SECONDS
            return [[] for _ in queries]
        result = collection.query(
            query_embeddings=self._embed(queries),
            n_results=k,
            include=["documents", "metadatas", "distances"],
        )
        return [
            [
                Passage(
                    text=text,
                    source=str(meta["source"]),
                    title=str(meta["title"]),
                    heading=str(meta["heading"]),
                    score=min(1.0, max(0.0, 1.0 - distance)),
                )
                for text, meta, distance in zip(texts, metas, distances, strict=True)
            ]
            for texts, metas, distances in zip(
                result["documents"], result["metadatas"], result["distances"], strict=True
            )
        ]

    def _ping(self) -> None:
        try:
            self._chroma()
            self._client.heartbeat()
        except Exception as error:  # chromadb raises ValueError, httpx errors and its own
            where = self._chroma_url or self._data_dir / "chroma"
            raise ConnectionError(f"Chroma is unreachable at {where}: {error}") from error

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = MiniLMEmbedder()
        return self._embedder.embed(texts)

    def _chroma(self) -> Any:
        with self._lock:
            if self._collection is None:
                self._client = self._connect()
                # No embedding function: we always pass our own vectors, so Chroma never
                # reaches for its default model (which it would download).
                self._collection = self._client.get_or_create_collection(
                    self._collection_name,
                    embedding_function=None,
                    configuration={"hnsw": {"space": "cosine"}},
                )
            return self._collection

    def _connect(self) -> Any:
        settings = Settings(anonymized_telemetry=False)
        if self._chroma_url is None:
            path = self._data_dir / "chroma"
            path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(path), settings=settings)
        url = urlsplit(self._chroma_url)
        https = url.scheme == "https"
        return chromadb.HttpClient(
            host=url.hostname or "localhost",
            port=url.port or (443 if https else 8000),
            ssl=https,
            settings=settings,
        )

    def _sync(self, scope: _Scope, report: IngestReport, writer: _Writer) -> None:
        """Queue the scope's new and changed files; delete the chunks of its removed files."""
        stored = self._stored(scope.root)
        for file in scope.files:
            state = stored.pop(file.source, None)
            if writer.has(file):  # the same file reached through two of the paths
                continue
            if state == (file.sha, True):
                report.unchanged += 1
                writer.skip(file)
                continue
            if state is None:
                report.added += 1
            else:
                report.updated += 1
                self._delete(scope.root, file.source)
            writer.queue(file)
        if scope.is_folder:
            for source in stored:
                self._delete(scope.root, source)
            report.removed += len(stored)

    def _stored(self, root: Path) -> dict[str, tuple[str, bool]]:
        """source -> (sha, complete) for every file stored under ``root``."""
        found = self._chroma().get(where={"root": str(root)}, include=["metadatas"])
        chunks: dict[str, list[tuple[str, int]]] = {}
        for meta in found["metadatas"]:
            entry = (str(meta["sha"]), int(meta["chunks"]))
            chunks.setdefault(str(meta["source"]), []).append(entry)
        return {
            source: (entries[0][0], len(set(entries)) == 1 and len(entries) == entries[0][1])
            for source, entries in chunks.items()
        }

    def _delete(self, root: Path, source: str) -> None:
        self._chroma().delete(where={"$and": [{"root": str(root)}, {"source": source}]})

    def _store(self, records: list[_Record]) -> None:
        self._chroma().upsert(
            ids=[record.id for record in records],
            embeddings=self._embed([record.chunk.embedding_text for record in records]),
            documents=[record.chunk.text for record in records],
            metadatas=[record.metadata for record in records],
        )


class _Writer:
    """Embeds and stores queued files' chunks in batches that span files.

    Batches span files so the embedder can sort many chunks by length; progress is reported
    for a file once all of its chunks are stored, in the order the files were given.
    """

    def __init__(
        self, store: Callable[[list[_Record]], None], total: int, on_progress: Progress | None
    ) -> None:
        self._store = store
        self._total = total
        self._on_progress = on_progress
        self._pending: list[_Record] = []
        self._waiting: deque[tuple[str, int]] = deque()  # (source, records queued up to it)
        self._queued = 0
        self._stored = 0
        self._done = 0
        self._seen: set[tuple[Path, str]] = set()

    def has(self, file: _File) -> bool:
        return file.key in self._seen

    def skip(self, file: _File) -> None:
        self._seen.add(file.key)
        self._waiting.append((file.source, self._queued))
        self._report()

    def queue(self, file: _File) -> None:
        self._seen.add(file.key)
        text = file.data.decode("utf-8", errors="replace")
        chunks = chunk_text(text, file.path)
        self._pending.extend(_Record(file, i, len(chunks), chunk) for i, chunk in enumerate(chunks))
        self._queued += len(chunks)
        self._waiting.append((file.source, self._queued))
        while len(self._pending) >= BATCH:
            self._flush(BATCH)

    def finish(self) -> int:
        self._flush(len(self._pending))
        return self._stored

    def _flush(self, size: int) -> None:
        if size:
            batch, self._pending = self._pending[:size], self._pending[size:]
            self._store(batch)
            self._stored += size
        self._report()

    def _report(self) -> None:
        while self._waiting and self._waiting[0][1] <= self._stored:
            source, _ = self._waiting.popleft()
            self._done += 1
            if self._on_progress is not None:
                self._on_progress(source, self._done, self._total)


def _scan(path: Path) -> _Scope:
    path = path.expanduser().resolve()
    if path.is_dir():
        files = [_read(path, file) for file in _walk(path)]
        return _Scope(path, [f for f in files if f.data.strip()], is_folder=True)
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            expected = ", ".join(sorted(SUFFIXES))
            raise ValueError(f"{path}: not a knowledge file (expected one of {expected})")
        file = _read(path.parent, path)
        return _Scope(path.parent, [file] if file.data.strip() else [], is_folder=False)
    raise FileNotFoundError(f"{path}: no such file or folder")


def _walk(root: Path) -> Iterator[Path]:
    """Supported files under ``root``, skipping hidden files and folders and licence files."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (
            path.suffix.lower() in SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in relative.parts)
            and path.stem.upper() not in SKIPPED_STEMS
        ):
            yield path


def _read(root: Path, path: Path) -> _File:
    data = path.read_bytes()
    source = path.relative_to(root).as_posix()
    return _File(root, source, path, data, hashlib.sha256(data).hexdigest())


def _close_http_sessions(client: Any) -> None:
    # Client.close() leaves HttpClient's httpx sessions (its own and its admin client's) open:
    # https://github.com/chroma-core/chroma/issues/2702
    for owner in (client, getattr(client, "_admin_client", None)):
        session = getattr(getattr(owner, "_server", None), "_session", None)
        if session is not None:
            session.close()
