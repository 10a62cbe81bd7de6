"""A fingerprint of an LM head's weight matrix that survives dtype changes but not another model.

Hashing the raw bytes would break when the same model is loaded in bf16 instead of float32, or
exported to ONNX. Instead we keep a few dozen statistics of fixed rows (their L2 norms and their
projections on a fixed pseudo-random direction) and compare them with a relative tolerance.
Per-element rounding noise averages out over the hidden dimension, while two different models
(or a fine-tune) differ by far more than the tolerance.
"""

from __future__ import annotations

import numpy as np

METHOD = "lm-head-rows-v1"
_ROWS = 16
_SEED = 20251030
# bf16 rounding moves a row norm by ~1e-4 relative; a different model by ~1e-1 or more.
RTOL = 1e-2


def _row_indices(vocab_size: int) -> np.ndarray:
    return np.unique(np.linspace(0, vocab_size - 1, _ROWS).round().astype(np.int64))


def lm_head_fingerprint(rows: np.ndarray, vocab_size: int) -> list[float]:
    """Fingerprint from the rows ``_row_indices(vocab_size)`` of the LM head, as float64."""
    rows = np.asarray(rows, dtype=np.float64)
    direction = np.random.default_rng(_SEED).standard_normal(rows.shape[1])
    direction /= np.linalg.norm(direction)
    norms = np.linalg.norm(rows, axis=1)
    projections = rows @ direction
    return [round(float(v), 6) for v in np.concatenate([norms, projections])]


def fingerprint_from_matrix(weight: np.ndarray) -> list[float]:
    """Fingerprint of a full ``[vocab, hidden]`` LM-head matrix (numpy)."""
    return lm_head_fingerprint(np.asarray(weight)[_row_indices(weight.shape[0])], weight.shape[0])


def fingerprints_match(expected: list[float], actual: list[float]) -> bool:
    a = np.asarray(expected, dtype=np.float64)
    b = np.asarray(actual, dtype=np.float64)
    if a.shape != b.shape:
        return False
    scale = max(float(np.abs(a).mean()), 1e-12)
    return bool(np.allclose(b, a, rtol=RTOL, atol=RTOL * scale))


def row_indices(vocab_size: int) -> np.ndarray:
    """Which rows of the LM head the fingerprint reads (so a backend can gather only those)."""
    return _row_indices(vocab_size)
