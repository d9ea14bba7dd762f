"""The knowledge base: documents chunked, embedded offline and kept in Chroma.

Chroma itself is the manifest: every chunk carries its file's ``root``, ``source``, ``sha``
and ``chunks`` (how many chunks the file has), so a re-ingest compares file hashes with what
is stored and embeds only new or changed files. A file whose stored chunks are incomplete
(an ingest stopped half-way) counts as changed.

A source is a folder, a file, or a website URL: a site is crawled (brain/crawl.py), its root is
the crawl's scope and each page's source is its URL. The collection's metadata names the
embedder and the vector recipe (VECTORS) that built it; ingesting with another rebuilds the
collection, so two vector spaces never share one.

A search is hybrid: the dense ranking (the nearest vectors: an exact search over the vectors
held in memory with the lexical index, or Chroma's index for a large collection or one the
index is behind) and a BM25 ranking (brain/lexical.py, built from the collection itself) are
fused by reciprocal rank fusion
(brain/fusion.py), and one page takes at most ``per_page`` of the top-k slots. A passage's
``score`` stays its cosine similarity to the query, the confidence the answerers read.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import chromadb
import numpy as np
import structlog
from chromadb.config import Settings

from brain.chunking import SUFFIXES, Chunk, chunk_text
from brain.config import CrawlConfig
from brain.crawl import CrawlResult, ProgressCallback, crawl, crawl_scope, is_url
from brain.embedder import (
    DEFAULT_EMBEDDER,
    NUMERICS,
    ChildProcessEmbedder,
    Embedder,
    Kind,
    load_embedder,
)
from brain.fusion import fuse_by_page, top
from brain.lexical import Chunks, FollowedIndex, LexicalHits, LexicalIndex, Stamp
from gateway import metrics
from gateway.answering import Passage

log = structlog.get_logger(__name__)

BATCH = 200
# Not knowledge: legal boilerplate that sits beside docs (matched on the file stem).
SKIPPED_STEMS = frozenset({"LICENSE", "LICENCE", "COPYING", "NOTICE"})

Progress = Callable[[str, int, int], None]
# How a chunk's vector is made (see _store), followed by the embedder's NUMERICS if it has any;
# a change here must change this name, so that collections built the old way are rebuilt
# rather than mixed with new vectors.
VECTORS = "text+label"
# Collections from before the collection metadata named them: MiniLM, the text vector alone.
LEGACY_SPACE = "minilm/text"

EMPTY_RECHECK_SECONDS = 5.0
SEARCH_BATCH = 32
# Batches searched at once: while one is in the embedder, another is in Chroma or BM25 (all
# three release the GIL), so one process's searches use both cores of a small machine.
SEARCH_LANES = 2
# Chunks each retriever ranks per search: enough for k distinct pages once fused.
SEARCH_DEPTH = 40
CHUNKS_PAGE = 5000  # chunks read per request when the lexical index is rebuilt
# Up to this many chunks (a help centre has about a thousand; 20 MB of vectors at 512
# dimensions), the dense side is an exact search over the vectors held with the lexical index:
# one matrix product per batch, no Chroma query and no read of BM25-only chunks' vectors. On
# the 910 Plausible chunks, 50 searches in flight: 870 searches/s against 750 with Chroma's
# HNSW, p95 70 ms against 90, the same rankings (deterministic, too). Beyond it, or while the
# index is behind the collection, Chroma's index.
IN_MEMORY_CHUNKS = 10_000
# Recent query vectors, so the intent checks on a message reuse its search's embedding.
QUERY_VECTORS_KEPT = 1024


Retriever = Literal["dense", "bm25"]
RETRIEVERS: tuple[Retriever, ...] = ("dense", "bm25")


@dataclass(frozen=True, slots=True)
class _Query:
    """A search waiting for its batch; ``deadline`` in event-loop time, None for no limit."""

    text: str
    k: int
    per_page: int | None
    deadline: float | None
    answer: asyncio.Future[list[Passage]]


@dataclass(slots=True)
class _Found:
    """A chunk one of the retrievers ranked; ``cosine`` None until looked up (BM25 only)."""

    id: str
    text: str
    meta: dict[str, Any]
    cosine: float | None = None

    @classmethod
    def of(cls, index: LexicalIndex, position: int) -> _Found:
        chunks = index.chunks
        return cls(chunks.ids[position], chunks.documents[position], chunks.metadatas[position])

    @property
    def page(self) -> str:
        return f"{self.meta['root']}\n{self.meta['source']}"

    def passage(self, found_by: tuple[str, ...]) -> Passage:
        return Passage(
            text=self.text,
            source=str(self.meta["source"]),
            title=str(self.meta["title"]),
            heading=str(self.meta["heading"]),
            score=min(1.0, max(0.0, self.cosine or 0.0)),
            found_by=found_by,
        )


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
    root: str
    source: str
    path: Path  # its suffix says how to chunk the data; its stem is the title of last resort
    data: bytes
    sha: str

    @property
    def key(self) -> tuple[str, str]:
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
            "root": self.file.root,
            "sha": self.file.sha,
            "chunks": self.count,
        }


@dataclass(frozen=True, slots=True)
class _Scope:
    """One argument of ingest: a folder or a site, or a single file.

    ``complete``: every document of the root is in ``files`` (a folder, a crawl that was not
    cut short), so stored ones missing from it are removed, except those in ``keep`` (pages
    that failed this time). ``gone``: removed in any case (pages that answered 404 or 410).
    """

    root: str
    files: list[_File]
    complete: bool
    keep: frozenset[str] = frozenset()
    gone: frozenset[str] = frozenset()

    def removed(self, stored: Iterable[str]) -> list[str]:
        if self.complete:
            return [source for source in stored if source not in self.keep]
        return [source for source in stored if source in self.gone]


class KnowledgeBase:
    def __init__(
        self,
        data_dir: Path,
        *,
        chroma_url: str | None = None,
        collection: str = "knowledge",
        embedder: Embedder | str = DEFAULT_EMBEDDER,
        embedder_process: bool = False,
        crawl: CrawlConfig | None = None,
        retrievers: Sequence[Retriever] = RETRIEVERS,
    ) -> None:
        """``embedder``: a loaded embedder, or the name of one to load on first use (in a child
        process with ``embedder_process``, stopped by ``close``); ``retrievers``: the rankings a
        search fuses (one of them alone, for comparisons)."""
        self._data_dir = Path(data_dir)
        self._chroma_url = chroma_url
        self._collection_name = collection
        self._embedder = None if isinstance(embedder, str) else embedder
        self._loads_embedder = isinstance(embedder, str)  # and so stops its child on close
        self._embedder_process = embedder_process
        self.embedder_name = embedder if isinstance(embedder, str) else embedder.name
        numerics = NUMERICS.get(self.embedder_name)
        self._vectors = f"{VECTORS}/{numerics}" if numerics else VECTORS
        self._space = f"{self.embedder_name}/{self._vectors}"
        self._crawl = crawl or CrawlConfig()
        self._lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self._client: Any = None
        self._collection: Any = None
        self._empty_until = 0.0  # monotonic time until which the collection is known empty
        self._queries: deque[_Query] = deque()
        self._batchers: set[asyncio.Task[None]] = set()
        self._query_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_vectors_lock = threading.Lock()
        self._retrievers = tuple(dict.fromkeys(retrievers))
        self._lexicon = FollowedIndex(self._stamp, self._chunks)

    def ingest(
        self,
        paths: Sequence[str | Path],
        on_progress: Progress | None = None,
        on_crawl: ProgressCallback | None = None,
    ) -> IngestReport:
        """Bring the collection in line with the files and sites; ``on_progress(source, done,
        total)`` as documents are stored, ``on_crawl(url, fetched, found)`` as pages are fetched.

        Sites are crawled with ``asyncio.run``: call this from a thread without a running
        event loop (``asyncio.to_thread`` in async code).
        """
        started = time.perf_counter()
        scopes = [self._scope(p, on_crawl) for p in paths]
        self._use_own_vector_space()
        total = len({file.key for scope in scopes for file in scope.files})
        report = IngestReport(0, 0, 0, 0, 0, 0.0)
        writer = _Writer(self._store, total, on_progress)
        for scope in scopes:
            self._sync(scope, report, writer)
        report.chunks = writer.finish()
        if report.added or report.updated or report.removed:
            self._new_generation()
        report.seconds = time.perf_counter() - started
        self._empty_until = 0.0
        self._lexicon.invalidate()
        return report

    def is_stale(self, paths: Sequence[str | Path]) -> bool:
        """Files: any change. Sites: never crawled (a re-crawl is `gateway kb ingest`'s job)."""
        if self.count() == 0 or self.vector_space() != self._space:
            return True
        for path in paths:
            if is_url(str(path)):
                if not self._stored(crawl_scope(str(path))):
                    return True
                continue
            scope = _scan(Path(path))
            stored = self._stored(scope.root)
            for file in scope.files:
                if stored.pop(file.source, None) != (file.sha, True):
                    return True
            if scope.removed(stored):
                return True
        return False

    def vector_space(self) -> str:
        """``embedder/recipe`` of the vectors the collection holds."""
        metadata = self._chroma().metadata or {}
        if "embedder" not in metadata:
            return LEGACY_SPACE
        return f"{metadata['embedder']}/{metadata.get('vectors', 'text')}"

    def count(self) -> int:
        return int(self._chroma().count())

    async def search(
        self, query: str, k: int = 5, *, per_page: int | None = 1, deadline: float | None = None
    ) -> list[Passage]:
        """The `k` passages that best match `query`, best first, at most ``per_page`` of them
        from one page (None: no limit).

        Concurrent searches are embedded together: one forward pass reads the model's weights
        once for the whole batch, which is what a query's embedding costs on a CPU. Up to
        SEARCH_LANES batches run at once; queries that arrive while they all run form the next
        batch, so none waits for company.

        ``deadline`` (event-loop time): past it the answer is of no use, so a query still queued
        then is dropped with TimeoutError instead of embedded; so is one whose caller was
        cancelled. Work for callers that have gone never delays the ones still waiting.
        """
        if not query.strip() or k <= 0 or time.monotonic() < self._empty_until:
            return []
        answer: asyncio.Future[list[Passage]] = asyncio.get_running_loop().create_future()
        self._queries.append(_Query(query, k, per_page, deadline, answer))
        loop = answer.get_loop()
        self._batchers = {
            task for task in self._batchers if not (task.done() or task.get_loop().is_closed())
        }
        if sum(task.get_loop() is loop for task in self._batchers) < SEARCH_LANES:
            self._batchers.add(loop.create_task(self._run_batches(), name="knowledge:search"))
        return await answer

    async def embed(self, texts: Sequence[str], *, remember: bool = True) -> np.ndarray:
        """The texts' vectors in the collection's space, as queries (for exemplar matching:
        messages and exemplars alike; the report's questions); a text this process searched for
        or embedded lately costs nothing, its vector is reused (the intents and a procedure's
        trigger read the same message). `remember=False`: a batch (the report's questions) that
        must not push the live messages' vectors out."""
        with self._query_vectors_lock:
            known = [self._query_vectors.get(text) for text in texts]
        missing = [text for text, vector in zip(texts, known, strict=True) if vector is None]
        computed = await asyncio.to_thread(self._embed, missing, "query") if missing else None
        if computed is not None and remember:
            self._remember_query_vectors(missing, computed)
        fresh = iter(computed if computed is not None else [])
        rows = [vector if vector is not None else next(fresh) for vector in known]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)

    def searched_vector(self, text: str) -> np.ndarray | None:
        """The vector of `text` if this process searched for it lately, else None: never a
        forward pass (the intent check on the 2 s path)."""
        with self._query_vectors_lock:
            vector = self._query_vectors.get(text)
        return None if vector is None else np.asarray(vector, dtype=np.float32)

    def _remember_query_vectors(self, texts: list[str], vectors: np.ndarray) -> None:
        with self._query_vectors_lock:
            for text, vector in zip(texts, vectors, strict=True):
                self._query_vectors[text] = vector
                self._query_vectors.move_to_end(text)
            while len(self._query_vectors) > QUERY_VECTORS_KEPT:
                self._query_vectors.popitem(last=False)

    async def _run_batches(self) -> None:
        while batch := self._next_batch():
            try:
                found = await asyncio.to_thread(self._search, batch)
            except Exception as error:
                for query in batch:
                    if not query.answer.done():
                        query.answer.set_exception(error)
                continue
            for query, passages in zip(batch, found, strict=True):
                if not query.answer.done():
                    query.answer.set_result(passages)

    def _next_batch(self) -> list[_Query]:
        """Up to SEARCH_BATCH queued queries whose callers still wait for them, oldest first."""
        now = asyncio.get_running_loop().time()
        batch: list[_Query] = []
        while self._queries and len(batch) < SEARCH_BATCH:
            query = self._queries.popleft()
            if query.answer.done():  # its caller was cancelled (a time-out)
                metrics.SEARCHES_DROPPED.labels("cancelled").inc()
            elif query.deadline is not None and now >= query.deadline:
                metrics.SEARCHES_DROPPED.labels("deadline").inc()
                query.answer.set_exception(TimeoutError("the search's deadline passed"))
            else:
                batch.append(query)
        return batch

    async def ping(self) -> None:
        """Raises ConnectionError when Chroma cannot be reached (for a readiness probe)."""
        await asyncio.to_thread(self._ping)

    def close(self) -> None:
        """Release the Chroma client (its files, or its HTTP connections) and stop the
        embedder's child process, if this started one; both come back if this knowledge base
        is used again. A model loaded in process is the process's (load_embedder), not this
        knowledge base's: it stays loaded for the next one."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                _close_http_sessions(self._client)
            self._client = self._collection = None
        with self._embedder_lock:
            if self._loads_embedder and isinstance(self._embedder, ChildProcessEmbedder):
                self._embedder.close()

    def _search(self, batch: Sequence[_Query]) -> list[list[Passage]]:
        """Each query's fused top k, diverse by page, scored by cosine."""
        queries = [query.text for query in batch]
        collection = self._chroma()
        stored = collection.count()  # once per batch: it is a query of its own (profiled)
        if stored == 0 or self.vector_space() != self._space:
            # Nothing to search: skip the embedding (~10 ms of CPU per query), and the thread
            # hop for a while; re-checked after EMPTY_RECHECK_SECONDS in case another process
            # ingested (a shared Chroma server). Another model's vectors are not comparable
            # with this one's query vectors: that collection is empty until it is re-ingested.
            if stored:
                log.warning(
                    "knowledge.other_embedder",
                    collection=self._collection_name,
                    stored=self.vector_space(),
                    expected=self._space,
                    hint="run `gateway kb ingest` to rebuild it",
                )
            self._empty_until = time.monotonic() + EMPTY_RECHECK_SECONDS
            return [[] for _ in queries]
        vectors = self._embed(queries, "query") if "dense" in self._retrievers else None
        if vectors is not None:
            self._remember_query_vectors(queries, vectors)
        index = self._lexicon.current()
        # Held vectors are read only while the index has the collection's count: chunks
        # another process added or removed since are then in Chroma alone (an edit that keeps
        # the count reads as it was for RECHECK_SECONDS, as its text does in BM25).
        held = index.chunks.vectors if len(index) == stored else None
        depth = min(max(SEARCH_DEPTH, *(4 * query.k for query in batch)), stored)
        dense = None
        if vectors is not None:
            dense = (
                _nearest(index, held, vectors, depth)
                if held is not None
                else self._dense(collection, vectors, depth, index)
            )
        lexical = index.search(queries, depth) if "bm25" in self._retrievers else None
        if vectors is None:
            # BM25 alone (a comparison): the cosine is still the score, as for any search.
            vectors = self._embed(queries, "query")
        found = [
            _fused(
                query,
                dense[row] if dense is not None else None,
                lexical[row] if lexical is not None else None,
                index,
            )
            for row, query in enumerate(batch)
        ]
        self._score(collection, vectors, found, index, held)
        return [[hit.passage(by) for hit, by in hits if hit.cosine is not None] for hits in found]

    @staticmethod
    def _dense(
        collection: Any, vectors: np.ndarray, depth: int, index: LexicalIndex
    ) -> list[list[_Found]]:
        """Each query's nearest chunks by Chroma's index, as ids and distances: the texts and
        metadata come from the lexical index, which holds them already (reading them with the
        query was three quarters of its time, profiled: 24 ms against 6 ms for 32 queries). A
        chunk the index does not know (another process ingested it since) is read by id; one
        whose text another process changed reads as it was for RECHECK_SECONDS, as in BM25."""
        result = collection.query(query_embeddings=vectors, n_results=depth, include=["distances"])
        read: dict[str, tuple[str, dict[str, Any]]] = {}
        if unknown := sorted(
            {key for keys in result["ids"] for key in keys} - index.positions.keys()
        ):
            got = collection.get(ids=unknown, include=["documents", "metadatas"])
            read = dict(
                zip(got["ids"], zip(got["documents"], got["metadatas"], strict=True), strict=True)
            )

        def found(key: str, distance: float) -> _Found | None:
            if key in index.positions:
                hit = _Found.of(index, index.positions[key])
            elif key in read:
                hit = _Found(key, *read[key])
            else:  # deleted between the query and the read
                return None
            hit.cosine = 1.0 - distance
            return hit

        return [
            [
                hit
                for key, distance in zip(keys, distances, strict=True)
                if (hit := found(key, distance))
            ]
            for keys, distances in zip(result["ids"], result["distances"], strict=True)
        ]

    @staticmethod
    def _score(
        collection: Any,
        vectors: np.ndarray,
        found: list[list[tuple[_Found, tuple[str, ...]]]],
        index: LexicalIndex,
        held: np.ndarray | None,
    ) -> None:
        """The cosine of each chunk that only BM25 ranked, from its vector: the one `held`
        with the index, else the one stored. A chunk another process deleted since the index
        was built then keeps None (and is left out): the index follows within RECHECK_SECONDS."""
        unscored = {hit.id for hits in found for hit, _ in hits if hit.cosine is None}
        if not unscored:
            return
        if held is not None:
            by_id = {key: held[index.positions[key]] for key in unscored}
        else:
            stored = collection.get(ids=sorted(unscored), include=["embeddings"])
            by_id = dict(zip(stored["ids"], np.asarray(stored["embeddings"]), strict=True))
        for row, hits in enumerate(found):
            for hit, _ in hits:
                if hit.cosine is None and hit.id in by_id:
                    hit.cosine = float(np.dot(vectors[row], by_id[hit.id]))

    def _stamp(self) -> Stamp:
        """The collection's generation stamp (read afresh: another process may have ingested)
        and its chunk count."""
        self._chroma()
        fresh = self._client.get_collection(self._collection_name)
        return (fresh.metadata or {}).get("generation"), int(fresh.count())

    def _chunks(self) -> Chunks:
        """The collection's chunks, with their vectors up to IN_MEMORY_CHUNKS of them."""
        collection = self._chroma()
        include = ["documents", "metadatas"]
        if collection.count() <= IN_MEMORY_CHUNKS:
            include.append("embeddings")
        ids: list[str] = []
        documents: list[str] = []
        metadatas: list[dict[str, Any]] = []
        vectors: list[np.ndarray] = []
        while True:
            got = collection.get(include=include, limit=CHUNKS_PAGE, offset=len(ids))
            ids.extend(got["ids"])
            documents.extend(got["documents"])
            metadatas.extend(got["metadatas"])
            if "embeddings" in include:
                vectors.append(np.asarray(got["embeddings"], dtype=np.float32))
            if len(got["ids"]) < CHUNKS_PAGE:
                break
        held = np.concatenate(vectors).reshape(len(ids), -1) if vectors else None
        return Chunks(ids, documents, metadatas, held)

    def _new_generation(self) -> None:
        """Stamp the collection as changed, so every process's lexical index is rebuilt."""
        metadata = {"embedder": self.embedder_name, "vectors": self._vectors}
        self._chroma().modify(metadata={**metadata, "generation": uuid.uuid4().hex})

    def _ping(self) -> None:
        try:
            self._chroma()
            self._client.heartbeat()
        except Exception as error:  # chromadb raises ValueError, httpx errors and its own
            where = self._chroma_url or self._data_dir / "chroma"
            raise ConnectionError(f"Chroma is unreachable at {where}: {error}") from error

    def warm_up(self) -> None:
        """Load the embedding model now, so the first customer does not wait for it."""
        self._embed(["warm-up"], "query")

    def _embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = load_embedder(
                    self.embedder_name, child_process=self._embedder_process
                )
            embedder = self._embedder
        return embedder.embed(texts, kind)

    def _chroma(self) -> Any:
        with self._lock:
            if self._collection is None:
                self._client = self._connect()
                # No embedding function: we always pass our own vectors, so Chroma never
                # reaches for its default model (which it would download). The metadata only
                # applies when the collection is created.
                self._collection = self._client.get_or_create_collection(
                    self._collection_name,
                    embedding_function=None,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"embedder": self.embedder_name, "vectors": self._vectors},
                )
            return self._collection

    def _use_own_vector_space(self) -> None:
        """Drop a collection of another vector space, so the ingest rebuilds it whole."""
        stored = self.vector_space()
        if stored == self._space:
            return
        log.warning(
            "knowledge.rebuilding", collection=self._collection_name, stored=stored, to=self._space
        )
        with self._lock:
            self._client.delete_collection(self._collection_name)
            self._collection = None

    def _scope(self, path: str | Path, on_crawl: ProgressCallback | None) -> _Scope:
        if not is_url(str(path)):
            return _scan(Path(path))
        site = asyncio.run(crawl(str(path), self._crawl, on_page=on_crawl))
        return _site_scope(site)

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
        """Queue the scope's new and changed files; delete the chunks of its removed ones."""
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
        removed = scope.removed(stored)
        for source in removed:
            self._delete(scope.root, source)
        report.removed += len(removed)

    def _stored(self, root: str) -> dict[str, tuple[str, bool]]:
        """source -> (sha, complete) for every file stored under ``root``."""
        found = self._chroma().get(where={"root": root}, include=["metadatas"])
        chunks: dict[str, list[tuple[str, int]]] = {}
        for meta in found["metadatas"]:
            entry = (str(meta["sha"]), int(meta["chunks"]))
            chunks.setdefault(str(meta["source"]), []).append(entry)
        return {
            source: (entries[0][0], len(set(entries)) == 1 and len(entries) == entries[0][1])
            for source, entries in chunks.items()
        }

    def _delete(self, root: str, source: str) -> None:
        self._chroma().delete(where={"$and": [{"root": root}, {"source": source}]})

    def _store(self, records: list[_Record]) -> None:
        """A chunk's vector: its text (under its label) plus its label alone, normalised.

        The embedders average over words, so in a long passage the title and headings that
        customers' questions mostly echo are drowned out; the label's own vector, at equal
        weight, pulls the chunk back to its topic. On the labelled Plausible set this took
        USE's English hit@1 from 0.65 to 0.77 (benchmarks/brain_quality.py).
        """
        chunks = [record.chunk for record in records]
        vectors = self._embed(
            [chunk.embedding_text for chunk in chunks]
            + [chunk.label or chunk.text for chunk in chunks],
            "passage",
        )
        vectors = vectors[: len(chunks)] + vectors[len(chunks) :]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self._chroma().upsert(
            ids=[record.id for record in records],
            embeddings=vectors,
            documents=[chunk.text for chunk in chunks],
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
        self._seen: set[tuple[str, str]] = set()

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
        return _Scope(str(path), [f for f in files if f.data.strip()], complete=True)
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            expected = ", ".join(sorted(SUFFIXES))
            raise ValueError(f"{path}: not a knowledge file (expected one of {expected})")
        file = _read(path.parent, path)
        return _Scope(str(path.parent), [file] if file.data.strip() else [], complete=False)
    raise FileNotFoundError(f"{path}: no such file or folder")


def _site_scope(site: CrawlResult) -> _Scope:
    files = []
    for page in site.pages:
        data = page.markdown.encode()
        name = Path(f"{Path(urlsplit(page.url).path).stem or 'index'}.md")
        files.append(_File(site.root, page.url, name, data, hashlib.sha256(data).hexdigest()))
    return _Scope(site.root, files, site.complete, frozenset(site.failed), frozenset(site.gone))


def _walk(root: Path) -> Iterator[Path]:
    """Supported files under ``root`` (resolved), skipping hidden files and folders, licence
    files, and symlinks that lead out of ``root``: a link in a shared folder must not pull an
    arbitrary file of the host into the answers."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (
            path.suffix.lower() in SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in relative.parts)
            and path.stem.upper() not in SKIPPED_STEMS
        ):
            if not path.resolve().is_relative_to(root):
                log.warning("knowledge.link_outside_skipped", path=str(relative))
                continue
            yield path


def _read(root: Path, path: Path) -> _File:
    data = path.read_bytes()
    source = path.relative_to(root).as_posix()
    return _File(str(root), source, path, data, hashlib.sha256(data).hexdigest())


def _nearest(
    index: LexicalIndex, held: np.ndarray, vectors: np.ndarray, depth: int
) -> list[list[_Found]]:
    """Each query's `depth` nearest chunks by exact cosine over the vectors `held` with the
    index (all are unit length): one matrix product for the whole batch."""
    cosines = vectors @ held.T
    depth = min(depth, held.shape[0])
    nearest = np.argpartition(-cosines, depth - 1, axis=1)[:, :depth]
    ranked: list[list[_Found]] = []
    for row, candidates in enumerate(nearest):
        order = candidates[np.argsort(-cosines[row, candidates], kind="stable")]
        hits = []
        for position in order.tolist():
            hit = _Found.of(index, position)
            hit.cosine = float(cosines[row, position])
            hits.append(hit)
        ranked.append(hits)
    return ranked


def _fused(
    query: _Query,
    dense: list[_Found] | None,
    lexical: LexicalHits | None,
    index: LexicalIndex,
) -> list[tuple[_Found, tuple[str, ...]]]:
    """The query's top k chunks, each with the retrievers that ranked its page."""
    rankings: dict[str, list[str]] = {}
    chunks: dict[str, _Found] = {}
    if dense is not None:
        rankings["dense"] = [hit.id for hit in dense]
        chunks.update((hit.id, hit) for hit in dense)
    if lexical is not None:
        hits = [_Found.of(index, position) for position, _ in lexical.hits]
        rankings["bm25"] = [hit.id for hit in hits]
        for hit in hits:
            chunks.setdefault(hit.id, hit)
    weights = None
    if lexical is not None and dense is not None:
        weights = {"bm25": lexical.coverage**2}
    page_of = {key: hit.page for key, hit in chunks.items()}  # read 3 times a chunk
    pages = fuse_by_page(rankings, page_of.__getitem__, weights)
    return [(chunks[key], page.found_by) for key, page in top(pages, query.k, query.per_page)]


def _close_http_sessions(client: Any) -> None:
    # Client.close() leaves HttpClient's httpx sessions (its own and its admin client's) open:
    # https://github.com/chroma-core/chroma/issues/2702
    for owner in (client, getattr(client, "_admin_client", None)):
        session = getattr(getattr(owner, "_server", None), "_session", None)
        if session is not None:
            session.close()
