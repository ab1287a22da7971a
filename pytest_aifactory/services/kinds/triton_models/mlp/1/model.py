"""`mlp`: the model the `triton` service kind serves when a recipe names no repository.

Each request carries a batch of FP32 vectors of any width; the answer is a 16-wide embedding
per vector from two dense layers (ReLU, then tanh) with fixed pseudo-random weights, seeded by
the width so every server computes the same function. The requests one execution receives
(dynamic batching gathers them) go through one matrix product per width, as a real batched
model would: enough numerical work to measure, little enough for any CPU.

Tensors cross the backend by DLPack rather than `as_numpy()` / `Tensor(name, array)`: Python
backend stubs built against NumPy 1 see NumPy 2 arrays as empty through those.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

HIDDEN = 256
EMBEDDING = 16
SEED = 20240601


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self._weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _layers(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        if width not in self._weights:
            rng = np.random.default_rng(SEED + width)
            first = rng.standard_normal((width, HIDDEN), dtype=np.float32) / np.sqrt(width)
            second = rng.standard_normal((HIDDEN, EMBEDDING), dtype=np.float32) / np.sqrt(HIDDEN)
            self._weights[width] = (first, second)
        return self._weights[width]

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [
            np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "INPUT0"))
            for request in requests
        ]
        outputs: list[np.ndarray | None] = [None] * len(inputs)
        by_width: dict[int, list[int]] = {}
        for index, array in enumerate(inputs):
            by_width.setdefault(array.shape[-1], []).append(index)
        for width, indices in by_width.items():
            first, second = self._layers(width)
            stacked = np.concatenate([inputs[i].reshape(-1, width) for i in indices])
            embedded = np.tanh(np.maximum(stacked @ first, 0.0) @ second).astype(np.float32)
            start = 0
            for i in indices:
                rows = inputs[i].reshape(-1, width).shape[0]
                outputs[i] = np.ascontiguousarray(embedded[start : start + rows])
                start += rows
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("OUTPUT0", output)])
            for output in outputs
        ]
