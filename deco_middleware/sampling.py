"""The per-row decoding algorithm, written once for every tensor engine.

Given raw head outputs, :func:`resolve_decoding` applies the user's settings (scales, bounds,
fallbacks for non-finite rows) and :func:`warp_temperature` / :func:`nucleus_filter` turn a batch
of scores into the distribution to sample from, each row with its own temperature and top-p.
Engines (torch tensors, numpy arrays) only supply the handful of array operations in
:class:`ArrayOps`; the algorithm itself never branches on the engine.

Order of operations (METHOD.md): penalties (done by the caller) -> divide by T ->
optional top-k / min-p -> nucleus filter with P, always keeping the most likely token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

Array = TypeVar("Array")
GREEDY = 0.0
# Temperatures are floored here before dividing, so a head output of 1e-30 cannot overflow.
_MIN_DIVISOR = 1e-6


class ArrayOps(Protocol, Generic[Array]):
    """The array operations the algorithm needs; one small adapter per engine."""

    def full(self, like: Array, value: float) -> Array: ...
    def where(self, condition: Array, a: Array, b: Array) -> Array: ...
    def isfinite(self, x: Array) -> Array: ...
    def all_last(self, x: Array) -> Array: ...
    def clip(self, x: Array, low: float | None, high: float | None) -> Array: ...
    def softmax(self, x: Array) -> Array: ...
    def sort_desc(self, x: Array) -> tuple[Array, Array]: ...
    def unsort(self, sorted_values: Array, indices: Array) -> Array: ...
    def argmax_mask(self, x: Array) -> Array: ...
    def kth_largest(self, x: Array, k: int) -> Array: ...
    def max_last(self, x: Array) -> Array: ...
    def masked_fill(self, x: Array, mask: Array, value: float) -> Array: ...
    def count_last(self, mask: Array) -> Array: ...
    def cumsum64(self, x: Array) -> Array: ...
    def to64(self, x: Array) -> Array: ...
    def topk_values(self, x: Array, k: int) -> Array: ...
    def take_last(self, x: Array, index: Array) -> Array: ...
    def cumsum_int(self, mask: Array) -> Array: ...
    def as_index(self, values: Any, like: Array) -> Array: ...
    def topk(self, x: Array, k: int) -> tuple[Array, Array]: ...
    def nonzero(self, mask: Array) -> Array: ...
    def arange(self, n: int, like: Array) -> Array: ...
    def zeros_index(self, n: int, like: Array) -> Array: ...
    def full_like(self, x: Array, value: float) -> Array: ...
    def sort_values_desc(self, x: Array) -> Array: ...


def _numpy_topk_values(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values of each row, descending (one partition pass, then a sort of k values)."""
    vocab = x.shape[-1]
    largest = np.partition(x, vocab - k, axis=-1)[:, vocab - k :]
    return np.ascontiguousarray(np.sort(largest, axis=-1)[:, ::-1])


class NumpyOps:
    def full(self, like, value):
        return np.full(like.shape, value, dtype=np.float32)

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def isfinite(self, x):
        return np.isfinite(x)

    def all_last(self, x):
        return np.all(x, axis=-1)

    def clip(self, x, low, high):
        return x if low is None and high is None else np.clip(x, low, high)

    def softmax(self, x):
        # In place on one fresh array: the same operations as the textbook form, two fewer [B, V] allocations.
        out = x - np.max(x, axis=-1, keepdims=True)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)
        return out

    def sort_desc(self, x):
        indices = np.argsort(-x, axis=-1, kind="stable")
        return np.take_along_axis(x, indices, axis=-1), indices

    def unsort(self, sorted_values, indices):
        out = np.empty_like(sorted_values)
        np.put_along_axis(out, indices, sorted_values, axis=-1)
        return out

    def argmax_mask(self, x):
        mask = np.zeros(x.shape, dtype=bool)
        np.put_along_axis(mask, np.argmax(x, axis=-1)[:, None], True, axis=-1)
        return mask

    def kth_largest(self, x, k):
        return -np.partition(-x, k - 1, axis=-1)[:, k - 1 : k]

    def max_last(self, x):
        return np.max(x, axis=-1, keepdims=True)

    def masked_fill(self, x, mask, value):
        return np.where(mask, np.asarray(value, dtype=x.dtype), x)

    def count_last(self, mask):
        return mask.sum(axis=-1)

    def cumsum64(self, x):
        return np.cumsum(x, axis=-1, dtype=np.float64)

    def to64(self, x):
        return np.asarray(x, dtype=np.float64)

    def topk_values(self, x, k):
        return _numpy_topk_values(x, k)

    def take_last(self, x, index):
        return np.take_along_axis(x, np.asarray(index)[:, None], axis=-1)

    def cumsum_int(self, mask):
        return np.cumsum(mask, axis=-1)

    def as_index(self, values, like):
        return np.asarray(values, dtype=np.int64)

    def topk(self, x, k):
        # argpartition finds the k largest in one pass; only those k are then sorted.
        part = np.argpartition(x, x.shape[-1] - k, axis=-1)[:, x.shape[-1] - k :]
        part_values = np.take_along_axis(x, part, axis=-1)
        order = np.argsort(-part_values, axis=-1, kind="stable")
        return np.take_along_axis(part_values, order, axis=-1), np.take_along_axis(part, order, axis=-1)

    def nonzero(self, mask):
        return np.flatnonzero(mask)

    def arange(self, n, like):
        return np.arange(n)

    def zeros_index(self, n, like):
        return np.zeros(n, dtype=np.int64)

    def full_like(self, x, value):
        return np.full_like(x, value)

    def sort_values_desc(self, x):
        # Values only: the descending sequence is unique, whatever the order among ties.
        return np.sort(x, axis=-1)[:, ::-1]


class TorchOps:
    def __init__(self) -> None:
        import torch

        self.torch = torch

    def full(self, like, value):
        return self.torch.full(like.shape, value, dtype=self.torch.float32, device=like.device)

    def where(self, condition, a, b):
        return self.torch.where(condition, a, b)

    def isfinite(self, x):
        return self.torch.isfinite(x)

    def all_last(self, x):
        return x.all(dim=-1)

    def clip(self, x, low, high):
        return x if low is None and high is None else x.clamp(min=low, max=high)

    def softmax(self, x):
        return self.torch.softmax(x, dim=-1)

    def sort_desc(self, x):
        values, indices = self.torch.sort(x, dim=-1, descending=True, stable=True)
        return values, indices

    def unsort(self, sorted_values, indices):
        return sorted_values.scatter(-1, indices, sorted_values)

    def argmax_mask(self, x):
        mask = self.torch.zeros_like(x, dtype=self.torch.bool)
        return mask.scatter(-1, x.argmax(dim=-1, keepdim=True), True)

    def kth_largest(self, x, k):
        return self.torch.topk(x, k, dim=-1).values[:, -1:]

    def max_last(self, x):
        return x.max(dim=-1, keepdim=True).values

    def masked_fill(self, x, mask, value):
        return x.masked_fill(mask, value)

    def count_last(self, mask):
        return mask.sum(dim=-1)

    def cumsum64(self, x):
        return x.cumsum(dim=-1, dtype=self.torch.float64)

    def to64(self, x):
        return x.to(self.torch.float64)

    def topk_values(self, x, k):
        if self.numpy_view(x) and k > 64:
            # numpy's partition + value sort measured several times faster than torch.topk for
            # large k on CPU (torch sorts the k candidates with their indices).
            return self.torch.from_numpy(_numpy_topk_values(x.detach().numpy(), k))
        return self.torch.topk(x, k, dim=-1, sorted=True).values

    def take_last(self, x, index):
        return x.gather(-1, index[:, None])

    def cumsum_int(self, mask):
        return mask.cumsum(dim=-1)

    def as_index(self, values, like):
        return self.torch.as_tensor(values, dtype=self.torch.long, device=like.device)

    def topk(self, x, k):
        values, indices = self.torch.topk(x, k, dim=-1, sorted=True)
        return values, indices

    def nonzero(self, mask):
        return self.torch.nonzero(mask).flatten()

    def arange(self, n, like):
        return self.torch.arange(n, device=like.device)

    def zeros_index(self, n, like):
        return self.torch.zeros(n, dtype=self.torch.long, device=like.device)

    def full_like(self, x, value):
        return self.torch.full_like(x, value)

    def numpy_view(self, x) -> bool:
        # numpy reads CPU float32/float64 tensors without a copy; it has no bfloat16 or float16 SIMD sort.
        return x.device.type == "cpu" and x.dtype in (self.torch.float32, self.torch.float64)

    def sort_values_desc(self, x):
        if self.numpy_view(x):
            # numpy's vectorised value sort measured ~15x faster than torch.sort (which also
            # builds indices) on a 49,152-token row on this project's AVX2 CPU.
            return self.torch.from_numpy(np.ascontiguousarray(np.sort(x.detach().numpy(), axis=-1)[:, ::-1]))
        return self.torch.sort(x, dim=-1, descending=True).values


_OPS: dict[str, ArrayOps[Any]] = {}


def ops_for(array: Any) -> ArrayOps[Any]:
    """The adapter for ``array``'s engine; unknown engines fail listing the supported ones."""
    if isinstance(array, np.ndarray):
        key = "numpy"
    elif type(array).__module__.startswith("torch"):
        key = "torch"
    else:
        raise TypeError(f"Unsupported array type {type(array).__name__}; supported engines: numpy, torch.")
    if key not in _OPS:
        _OPS[key] = NumpyOps() if key == "numpy" else TorchOps()
    return _OPS[key]


def _check_number(name: str, value: float | None, *, low: float, high: float = math.inf, low_open: bool, hint: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"`{name}` has to be a number, got {value!r}.")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
        raise ValueError(f"`{name}` has to be {bound}, got {value!r}.{(' ' + hint) if hint else ''}")


@dataclass(frozen=True)
class DecodingSettings:
    """What the user controls on top of the heads' predictions.

    Args:
        temperature_scale: ``T_final = T_pred * temperature_scale``; 0 means greedy decoding.
        top_p_scale: ``P_final = clamp(P_pred * top_p_scale, 0, 1)``.
        min_temperature / max_temperature: optional bounds on ``T_final`` (not applied when greedy).
        fallback_temperature / fallback_top_p: used in place of the heads' prediction for a row whose
            hidden state or head output is NaN/inf (scales and bounds still apply).
        top_k / min_p: optional filters applied after the temperature, before the nucleus.
        use_temperature_head / use_top_p_head: switch a head off (T_pred = 1 or P_pred = 1).
    """

    temperature_scale: float = 1.0
    top_p_scale: float = 1.0
    min_temperature: float | None = None
    max_temperature: float | None = None
    fallback_temperature: float = 0.7
    fallback_top_p: float = 0.9
    top_k: int | None = None
    min_p: float | None = None
    use_temperature_head: bool = True
    use_top_p_head: bool = True

    def __post_init__(self) -> None:
        _check_number("temperature_scale", self.temperature_scale, low=0.0, low_open=False,
                      hint="Use 0 for greedy decoding, 1 to use the heads as they are.")
        _check_number("top_p_scale", self.top_p_scale, low=0.0, low_open=True,
                      hint="Use 1 to use the heads as they are.")
        _check_number("min_temperature", self.min_temperature, low=0.0, low_open=True)
        _check_number("max_temperature", self.max_temperature, low=0.0, low_open=True)
        if self.min_temperature is not None and self.max_temperature is not None and self.min_temperature > self.max_temperature:
            raise ValueError(
                f"`min_temperature` ({self.min_temperature}) is larger than `max_temperature` ({self.max_temperature}); "
                "swap them or drop one."
            )
        _check_number("fallback_temperature", self.fallback_temperature, low=0.0, low_open=True)
        _check_number("fallback_top_p", self.fallback_top_p, low=0.0, high=1.0, low_open=True)
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"`top_k` has to be a non-negative integer (0 or None disables it), got {self.top_k!r}.")
        _check_number("min_p", self.min_p, low=0.0, high=1.0, low_open=False)

    @property
    def greedy(self) -> bool:
        return self.temperature_scale == GREEDY


@dataclass
class ResolvedDecoding(Generic[Array]):
    temperature: Array  # [batch] applied temperature, 0 for greedy rows
    top_p: Array  # [batch] applied nucleus mass
    fallback: Array  # [batch] bool, rows that used the fallback values


def resolve_decoding(
    temperature_pred: Array, top_p_pred: Array, hidden_finite: Array, settings: DecodingSettings
) -> ResolvedDecoding[Array]:
    """Apply the user's settings to the heads' raw predictions, row by row."""
    ops = ops_for(temperature_pred)
    bad = ~(ops.isfinite(temperature_pred) & ops.isfinite(top_p_pred) & hidden_finite)
    if settings.use_temperature_head:
        temperature = ops.where(bad, ops.full(temperature_pred, settings.fallback_temperature), temperature_pred)
    else:
        temperature = ops.full(temperature_pred, 1.0)
    if settings.use_top_p_head:
        top_p = ops.where(bad, ops.full(top_p_pred, settings.fallback_top_p), top_p_pred)
    else:
        top_p = ops.full(top_p_pred, 1.0)
    temperature = temperature * settings.temperature_scale
    if not settings.greedy:
        temperature = ops.clip(temperature, settings.min_temperature, settings.max_temperature)
    top_p = ops.clip(top_p * settings.top_p_scale, 0.0, 1.0)
    return ResolvedDecoding(temperature=temperature, top_p=top_p, fallback=bad)


def warp_temperature(scores: Array, temperature: Array) -> Array:
    """Divide each row by its own temperature; a row with temperature 0 keeps only its argmax."""
    ops = ops_for(scores)
    greedy_rows = temperature <= 0
    if isinstance(ops, TorchOps) and ops.numpy_view(scores) and ops.numpy_view(temperature):
        # The same IEEE division in numpy, in the calling thread (see _nucleus_filter_torch_cpu).
        divisor = np.clip(temperature.detach().numpy(), _MIN_DIVISOR, None)[:, None]
        divided = ops.torch.from_numpy(scores.detach().numpy() / divisor)
    else:
        divided = scores / ops.clip(temperature, _MIN_DIVISOR, None)[:, None]
    if not bool(greedy_rows.any()):
        return divided
    keep_argmax = ops.argmax_mask(scores)
    greedy_scores = ops.masked_fill(scores, ~keep_argmax, -math.inf)
    return ops.where(greedy_rows[:, None], greedy_scores, divided)


def top_k_filter(scores: Array, top_k: int) -> Array:
    """Keep the ``top_k`` highest scores of each row (ties at the boundary are kept)."""
    ops = ops_for(scores)
    k = min(top_k, scores.shape[-1])
    return ops.masked_fill(scores, scores < ops.kth_largest(scores, k), -math.inf)


def min_p_filter(scores: Array, min_p: float) -> Array:
    """Drop tokens whose probability is below ``min_p`` times the row's top probability."""
    ops = ops_for(scores)
    probs = ops.softmax(scores)
    return ops.masked_fill(scores, probs < min_p * ops.max_last(probs), -math.inf)


def nucleus_filter_reference(scores: Array, top_p: Array) -> tuple[Array, Array]:
    """Keep each row's smallest set of most likely tokens whose mass reaches that row's ``top_p``.

    Tokens are ranked by probability, ties by vocabulary index. The token that crosses the threshold
    is kept, and so is the most likely token even when ``top_p`` is 0. Rows with ``top_p >= 1`` are
    left untouched. Returns the filtered scores and each row's nucleus size (finite tokens kept).
    Reference implementation: one full sort of every row.
    """
    ops = ops_for(scores)
    probs = ops.softmax(scores)
    sorted_probs, indices = ops.sort_desc(probs)
    mass_before = ops.cumsum64(sorted_probs) - ops.to64(sorted_probs)
    remove_sorted = mass_before >= ops.to64(top_p)[:, None]
    remove_sorted[:, 0] = False  # a fresh array from the comparison above, not the caller's scores
    remove_sorted = remove_sorted & (top_p < 1.0)[:, None]
    remove = ops.unsort(remove_sorted, indices)
    return ops.masked_fill(scores, remove, -math.inf), ops.count_last(~remove & (scores > -math.inf))


def _keep_by_threshold(ops: ArrayOps[Any], probs: Array, threshold: Array, size: Array) -> Array:
    """The reference's kept set, given each row's nucleus size ``n`` and n-th largest probability.

    Every token more likely than the n-th is kept; among the tokens tied with it, the lowest
    vocabulary indices fill the remaining places (the reference sorts stably by probability).
    """
    above = probs > threshold
    tied = probs == threshold
    needed = size[:, None] - ops.count_last(above)[:, None]
    tied_count = ops.count_last(tied)[:, None]
    if bool((tied_count <= needed).all()):  # every tied token fits: no need to rank them by index
        return above | tied
    return above | (tied & (ops.cumsum_int(tied) <= needed))


def _nucleus_size(ops: ArrayOps[Any], sorted_probs: Array, cumulative: Array, top_p64: Array) -> tuple[Array, Array]:
    """Nucleus size per row (1..k) and the probability of its last token, from a sorted prefix."""
    inside = (cumulative - ops.to64(sorted_probs)) < top_p64[:, None]  # the reference's own arithmetic
    inside[:, 0] = True  # a fresh array from the comparison above
    size = ops.count_last(inside)
    return size, ops.take_last(sorted_probs, size - 1)


def nucleus_filter(
    scores: Array, top_p: Array, *, candidates: tuple[int, ...] = (64, 1024, 8192)
) -> tuple[Array, Array]:
    """Same tokens as :func:`nucleus_filter_reference`, without an index sort of the whole vocabulary.

    Rows with ``top_p >= 1`` are returned unchanged (``scores`` itself when every row has one). For
    the others, the ``candidates[0]`` most likely tokens of each row are found (then
    ``candidates[1]``, ... for the rows still open). When a window's mass reaches the row's
    ``top_p`` (most rows: LM distributions are peaked), the nucleus size ``n`` is known and the kept
    set is the window's first ``n`` tokens, written into a row of ``-inf``. If the (n+1)-th window
    token ties the n-th, the kept set is rebuilt from the threshold: every token more likely than
    the n-th plus, among the tokens tied with it, the lowest indices, exactly the reference's prefix.
    Rows whose nucleus is larger than the last window sort their probabilities' *values* only (no
    index sort; the cumulative mass of the sorted values is the reference's), then keep by threshold.
    Rows whose mass never reaches ``top_p`` (rounding, NaN) go through the reference itself.
    For CPU float32/float64 torch tensors, everything after torch's softmax runs in numpy on the
    same memory; the result is a torch tensor either way.
    """
    ops = ops_for(scores)
    if isinstance(ops, TorchOps) and ops.numpy_view(scores) and ops.numpy_view(top_p):
        return _nucleus_filter_torch_cpu(ops, scores, top_p, candidates)
    return _nucleus_filter(
        ops, scores, top_p, None, candidates, lambda rows: nucleus_filter_reference(scores[rows], top_p[rows])
    )


def _nucleus_filter_torch_cpu(ops: TorchOps, scores: Any, top_p: Any, candidates: tuple[int, ...]) -> tuple[Any, Any]:
    """The torch softmax (so the probabilities are the reference's), everything after it in numpy.

    Why: each torch operation over a [batch, vocab] tensor is one parallel region, and on a CPU
    shared with other work a region waits for a descheduled worker thread (measured ~12 ms per
    operation with 2 threads on this project's loaded 2-core machine, against 0.2-1.6 ms in one
    thread). numpy works on the same memory, in the calling thread, without copies.
    """
    torch = ops.torch
    if not bool((top_p < 1.0).any()):
        return scores, ops.count_last(scores > -math.inf)
    probs = torch.softmax(scores.detach(), dim=-1).numpy()
    scores_np, top_p_np = scores.detach().numpy(), top_p.detach().numpy()

    def reference(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = torch.from_numpy(rows)
        row_filtered, row_sizes = nucleus_filter_reference(scores[index], top_p[index])
        return row_filtered.numpy(), row_sizes.numpy()

    filtered, sizes = _nucleus_filter(ops_for(scores_np), scores_np, top_p_np, probs, candidates, reference)
    if filtered is scores_np:
        return scores, torch.from_numpy(sizes)
    return torch.from_numpy(filtered), torch.from_numpy(sizes)


def _nucleus_filter(
    ops: ArrayOps[Any],
    scores: Array,
    top_p: Array,
    probs: Array | None,
    candidates: tuple[int, ...],
    reference: Any,
) -> tuple[Array, Array]:
    """:func:`nucleus_filter` on one engine; ``probs`` is ``softmax(scores)`` when already known."""
    batch, vocab = scores.shape
    open_rows = ops.nonzero(top_p < 1.0)
    if len(open_rows) == 0:
        return scores, ops.count_last(scores > -math.inf)
    sizes = ops.zeros_index(batch, scores)
    filtered = ops.full_like(scores, -math.inf)  # a fresh array, filled row by row; never `scores`
    if len(open_rows) < batch:
        closed_rows = ops.nonzero(top_p >= 1.0)
        filtered[closed_rows] = scores[closed_rows]
        sizes[closed_rows] = ops.count_last(scores[closed_rows] > -math.inf)
    pending = open_rows
    if probs is None:
        pending_probs = ops.softmax(scores[pending] if len(pending) < batch else scores)
    else:
        pending_probs = probs[pending] if len(pending) < batch else probs

    def keep_by_threshold(rows: Array, probs: Array, threshold: Array, size: Array) -> None:
        row_scores = scores[rows]
        keep = _keep_by_threshold(ops, probs, threshold, size)
        filtered[rows] = ops.masked_fill(row_scores, ~keep, -math.inf)
        sizes[rows] = ops.count_last(keep & (row_scores > -math.inf))

    for number, window in enumerate(candidates):
        k = min(window, vocab)
        if k >= vocab or len(pending) == 0:
            break
        row_top_p = ops.to64(top_p[pending])
        if number > 0:
            # Larger windows: values only (no indices), then keep by threshold.
            top_values = ops.topk_values(pending_probs, k)
            cumulative = ops.cumsum64(top_values)
            resolved = cumulative[:, -1] >= row_top_p
            done = ops.nonzero(resolved)
            if len(done):
                size, threshold = _nucleus_size(ops, top_values[done], cumulative[done], row_top_p[done])
                keep_by_threshold(pending[done], pending_probs[done], threshold, size)
            still = ops.nonzero(~resolved)
            if len(still) < len(pending):
                pending, pending_probs = pending[still], pending_probs[still]
            continue
        top_values, top_indices = ops.topk(pending_probs, k)  # [rows, k], descending
        cumulative = ops.cumsum64(top_values)
        resolved = cumulative[:, -1] >= row_top_p
        done = ops.nonzero(resolved)
        if len(done):
            rows, values, indices = pending[done], top_values[done], top_indices[done]
            size, threshold = _nucleus_size(ops, values, cumulative[done], row_top_p[done])
            following = ops.take_last(values, ops.clip(size, None, k - 1))
            # The window's first n tokens are the nucleus unless the (n+1)-th ties the n-th (which
            # tied tokens the reference keeps depends on their vocabulary order) or the window ends at n.
            clean = (size < k) & (following[:, 0] < threshold[:, 0])
            clean_at = ops.nonzero(clean)
            if len(clean_at):
                width = int(size[clean_at].max())
                keep_at = ops.arange(width, scores)[None, :] < size[clean_at][:, None]
                # Padding columns repeat the row's top token, so every row writes `width` cells.
                columns = ops.where(keep_at, indices[clean_at][:, :width], indices[clean_at][:, :1])
                clean_rows = rows[clean_at][:, None]
                kept_scores = scores[clean_rows, columns]
                filtered[clean_rows, columns] = kept_scores
                sizes[rows[clean_at]] = ops.count_last(keep_at & (kept_scores > -math.inf))
            tied_at = ops.nonzero(~clean)
            if len(tied_at):
                at = done[tied_at]
                keep_by_threshold(pending[at], pending_probs[at], threshold[tied_at], size[tied_at])
        still = ops.nonzero(~resolved)
        if len(still) < len(pending):  # copy the open rows' probabilities only when some closed
            pending, pending_probs = pending[still], pending_probs[still]
    if len(pending):
        sorted_probs = ops.sort_values_desc(pending_probs)
        cumulative = ops.cumsum64(sorted_probs)
        row_top_p = ops.to64(top_p[pending])
        resolved = cumulative[:, -1] >= row_top_p
        done = ops.nonzero(resolved)
        if len(done):
            size, threshold = _nucleus_size(ops, sorted_probs[done], cumulative[done], row_top_p[done])
            keep_by_threshold(pending[done], pending_probs[done], threshold, size)
        pending = pending[ops.nonzero(~resolved)]
    if len(pending):
        row_filtered, row_sizes = reference(pending)
        filtered[pending] = row_filtered
        sizes[pending] = row_sizes
    return filtered, sizes
