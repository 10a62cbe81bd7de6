"""A fingerprint of a whole LM-head weight matrix that survives fp32/bf16 copies but not a change of weights.

Method ``lm-head-sketch-v2`` (the one written and accepted):

1. Every weight is rounded to bfloat16 (round to nearest even, as ``torch.Tensor.to(torch.bfloat16)``
   does). A float32 model and its bfloat16 copy then hold *the same* numbers, so the fingerprint of
   one equals the other's up to float64 summation order (measured: ~1e-16 relative).
2. The rounded ``[vocab, hidden]`` matrix ``W`` is sketched as ``L.T @ W @ R / sqrt(vocab * hidden)``
   with fixed Gaussian ``L`` ``[vocab, 8]`` and ``R`` ``[hidden, 8]`` (seeded by the sizes): 64 numbers,
   each a random weighted sum over *every* entry of ``W``, so a change anywhere moves them.
3. Two fingerprints match when ``|a - b| / |a| <= RTOL`` (Euclidean norms over the 64 values). A change
   ``D`` of the weights moves the sketch by about ``|D| / |W|`` (Frobenius norms): scaling the head by
   1.1% moves it by 1.1%, and so does noise whose RMS is 1.1% of the weights' RMS.

What it cannot see: a change smaller than RTOL relative to the whole matrix (for example one
fine-tuned row among 49,152), and anything outside the LM head (the body of the model).

The retired method ``lm-head-rows-v1`` read only 16 rows; :func:`legacy_rows_values` keeps it so that
``python -m deco_middleware.heads.restamp`` can verify an old manifest before re-stamping it.

Every producer of an identity (the Hugging Face model, the exported ONNX LM, the ONNX Runtime loop)
calls :func:`identity_from_lm_head` here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import IncompatibleHeadsError
from .manifest import BaseModelIdentity, LMHeadFingerprint

__all__ = [
    "LEGACY_METHODS",
    "METHOD",
    "RTOL",
    "RowReader",
    "fingerprint_distance",
    "fingerprint_from_matrix",
    "fingerprints_match",
    "identity_from_lm_head",
    "legacy_rows_values",
    "lm_head_fingerprint",
    "matrix_row_reader",
]

METHOD = "lm-head-sketch-v2"
LEGACY_METHODS = ("lm-head-rows-v1",)
# Measured (benchmarks/fingerprint_identity.py) on SmolLM2-135M-Instruct: a bf16 copy 0 (exact after the
# rounding step), a float16 copy 0, a 1.1% scale 1.2e-2, noise of 0.3% RMS 3.1e-3, one row replaced
# 6.7e-3. A float16 copy of a float32 matrix off the bf16 grid: 4.2e-4 (SmolLM2 + noise), 1.5e-3 (Gaussian).
RTOL = 2e-3
_SKETCH = 8
_SEED = 20251030
_CHUNK_ROWS = 4096

RowReader = Callable[[int, int], np.ndarray]
"""``read_rows(start, stop)`` returns rows ``start:stop`` of the ``[vocab, hidden]`` LM head as float32."""


def matrix_row_reader(weight: np.ndarray) -> RowReader:
    """A :data:`RowReader` over a numpy (or memory-mapped) ``[vocab, hidden]`` matrix."""
    return lambda start, stop: np.asarray(weight[start:stop], dtype=np.float32)


def _round_to_bfloat16(block: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32; what torch's cast computes."""
    bits = np.ascontiguousarray(block, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def _sketch_values(read_rows: RowReader, vocab_size: int, hidden_size: int) -> list[float]:
    rng = np.random.default_rng([_SEED, vocab_size, hidden_size])
    right = rng.standard_normal((hidden_size, _SKETCH))
    left = rng.standard_normal((vocab_size, _SKETCH))
    sketch = np.zeros((_SKETCH, _SKETCH))
    for start in range(0, vocab_size, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, vocab_size)
        block = np.asarray(read_rows(start, stop), dtype=np.float32)
        if block.shape != (stop - start, hidden_size):
            raise ValueError(f"read_rows({start}, {stop}) returned shape {list(block.shape)}, expected "
                             f"[{stop - start}, {hidden_size}].")
        rounded = _round_to_bfloat16(block).astype(np.float64)
        sketch += left[start:stop].T @ (rounded @ right)
    sketch /= np.sqrt(float(vocab_size) * float(hidden_size))
    if not np.isfinite(sketch).all():
        raise IncompatibleHeadsError("The model's LM head holds NaN or inf weights; no heads fit it.")
    return [float(f"{v:.10g}") for v in sketch.ravel()]


def _legacy_row_indices(vocab_size: int) -> np.ndarray:
    return np.unique(np.linspace(0, vocab_size - 1, 16).round().astype(np.int64))


def legacy_rows_values(read_rows: RowReader, vocab_size: int) -> list[float]:
    """The retired ``lm-head-rows-v1`` values: norms and projections of 16 fixed rows (for re-stamping)."""
    rows = np.concatenate([read_rows(int(i), int(i) + 1) for i in _legacy_row_indices(vocab_size)]).astype(np.float64)
    direction = np.random.default_rng(_SEED).standard_normal(rows.shape[1])
    direction /= np.linalg.norm(direction)
    return [round(float(v), 6) for v in np.concatenate([np.linalg.norm(rows, axis=1), rows @ direction])]


def _legacy_match(expected: list[float], actual: list[float]) -> bool:
    a, b = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if a.shape != b.shape:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        scale = max(float(np.abs(a).mean()), 1e-12)
        return bool(np.isfinite(scale) and np.allclose(b, a, rtol=1e-2, atol=1e-2 * scale))


def lm_head_fingerprint(
    read_rows: RowReader, vocab_size: int, hidden_size: int, *, method: str = METHOD
) -> LMHeadFingerprint:
    """Fingerprint of the LM head read through ``read_rows`` (see the module docstring)."""
    if method == METHOD:
        return LMHeadFingerprint(method=method, values=_sketch_values(read_rows, vocab_size, hidden_size))
    if method in LEGACY_METHODS:
        return LMHeadFingerprint(method=method, values=legacy_rows_values(read_rows, vocab_size))
    raise ValueError(f"Unknown fingerprint method {method!r}; known: {', '.join((METHOD, *LEGACY_METHODS))}.")


def fingerprint_from_matrix(weight: np.ndarray, *, method: str = METHOD) -> list[float]:
    """Fingerprint values of a full ``[vocab, hidden]`` LM-head matrix (numpy)."""
    weight = np.asarray(weight)
    return lm_head_fingerprint(matrix_row_reader(weight), weight.shape[0], weight.shape[1], method=method).values


def identity_from_lm_head(
    read_rows: RowReader, vocab_size: int, hidden_size: int, *, name: str, architecture: str,
    fingerprint: LMHeadFingerprint | None = None,
) -> BaseModelIdentity:
    """The base-model identity recorded in manifests: name, architecture, sizes, LM-head fingerprint.

    ``fingerprint`` is one computed earlier by :func:`lm_head_fingerprint` for the same matrix (a cache).
    """
    if fingerprint is None:
        fingerprint = lm_head_fingerprint(read_rows, int(vocab_size), int(hidden_size))
    return BaseModelIdentity(
        name=name, architecture=architecture, hidden_size=int(hidden_size), vocab_size=int(vocab_size),
        lm_head_fingerprint=fingerprint,
    )


def fingerprint_distance(expected: list[float], actual: list[float]) -> float:
    """``|expected - actual| / |expected|`` over the values (inf when the lengths differ)."""
    a, b = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    with np.errstate(over="ignore", invalid="ignore"):  # values near 1e308 (a hostile manifest): no match
        distance = float(np.linalg.norm(a - b) / max(float(np.linalg.norm(a)), 1e-300))
    return distance if np.isfinite(distance) else float("inf")


def fingerprints_match(expected: LMHeadFingerprint, actual: LMHeadFingerprint) -> bool:
    """Same method and values within the method's tolerance."""
    if expected.method != actual.method:
        return False
    if expected.method in LEGACY_METHODS:
        return _legacy_match(expected.values, actual.values)
    return fingerprint_distance(expected.values, actual.values) <= RTOL
