"""What the head answers, without Keras: the name of its logits layer, the digest of that layer's weights (which
calibration statistics are tied to), and the softmax every NumPy reader of logits uses (one definition)."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

LOGITS = "head_logits"  # the layer whose output training's loss uses


def head_digest(weights: Iterable[np.ndarray]) -> str:
    """A short digest of the logits layer's weights (kernel, bias), as float32 bytes: statistics fitted on one head
    (the out-of-distribution Gaussian) say which head they belong to."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w, np.float32).tobytes())
    return h.hexdigest()[:16]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, computed in float64 (returned as float64; a caller that
    answers float32 casts)."""
    z = np.asarray(logits, np.float64)
    if temperature != 1.0:
        z = z / float(temperature)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
