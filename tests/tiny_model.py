"""The tiny model of the session tests: ``y = relu(x @ W + b)``, ``total = sum(y, axis=1)``."""

from __future__ import annotations

import numpy as np

W = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]], np.float32)  # (3, 2)
B = np.array([0.1, -0.2], np.float32)


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    y = np.maximum(x @ W + B, 0)
    return {"y": y, "total": y.sum(axis=1, keepdims=True)}
