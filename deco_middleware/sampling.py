"""The per-row decoding algorithm, written once for every tensor engine.

One decoding step is :func:`decode_step`: a :class:`Predictor` decides each row's temperature,
top-p and optional filters (:class:`RowDecisions`) from the hidden state and the raw logits; the
step then divides the (penalised) scores by T, applies the filters and the nucleus with P, and
:func:`draw` picks each row's token with one uniform from that row's own stream
(:class:`RowRandom`, seeded by :func:`row_seeds`). Every loop (the Hugging Face processors, the
batched engine, the ONNX Runtime loop, later vLLM and onnxruntime-genai) calls these and nothing else.

Predictors: :class:`LearnedPredictor` (the heads, through :func:`resolve_decoding` and the user's
:class:`DecodingSettings`), :class:`StaticPredictor` (one T and P; T = 0 is greedy) and
:class:`EntropyTemperaturePredictor` (EDT). Baselines add their own predictors and
:class:`ScoreFilter` s elsewhere.

Engines (torch tensors, numpy arrays) only supply the handful of array operations in
:class:`ArrayOps`; the algorithm itself never branches on the engine. Where numpy is faster on the
same memory (CPU torch tensors), the adapter hands out a zero-copy numpy view
(:meth:`ArrayOps.host_view`) and the algorithm runs on that.

Order of operations (METHOD.md): penalties (done by the caller) -> divide by T ->
optional top-k / min-p -> nucleus filter with P, always keeping the most likely token.

Non-finite rows: a row whose scores hold a NaN or +inf, or no finite value at all (a NaN/inf hidden
state makes the LM's logits NaN too), has no distribution to sample from. :func:`decode_step`
marks it ``fallback`` and returns it with no finite entry (``nucleus_size`` 0); :func:`draw`
returns ``-1`` for it, and every loop ends such a row with its end-of-sequence token and counts it.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

Array = TypeVar("Array")
GREEDY = 0.0
# Temperatures are floored here before dividing, so a head output of 1e-30 cannot overflow.
_MIN_DIVISOR = 1e-6
# What draw() returns for a row without a single finite score (see "Non-finite rows" above).
NO_TOKEN = -1


class ArrayOps(Protocol, Generic[Array]):
    """The array operations the algorithm needs; one small adapter per engine."""

    def full(self, like: Array, value: float) -> Array: ...
    def where(self, condition: Array, a: Array, b: Array) -> Array: ...
    def isfinite(self, x: Array) -> Array: ...
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
    def host_view(self, x: Array) -> np.ndarray | None:
        """``x`` as a numpy array on the same memory (no copy), or ``None`` when there is none."""
        ...
    def to_host(self, x: Array) -> np.ndarray:
        """``x`` as a float32 numpy array (a copy only when it lives elsewhere or in another dtype)."""
        ...
    def from_host(self, x: np.ndarray, like: Array) -> Array:
        """A numpy array back on ``like``'s engine and device (no copy on the CPU)."""
        ...


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

    def host_view(self, x):
        return x

    def to_host(self, x):
        return np.asarray(x, dtype=np.float32)

    def from_host(self, x, like):
        return x


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
        view = self.host_view(x)
        if view is not None and k > 64:
            # numpy's partition + value sort measured several times faster than torch.topk for
            # large k on CPU (torch sorts the k candidates with their indices).
            return self.torch.from_numpy(_numpy_topk_values(view, k))
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

    def sort_values_desc(self, x):
        view = self.host_view(x)
        if view is not None:
            # numpy's vectorised value sort measured ~15x faster than torch.sort (which also
            # builds indices) on a 49,152-token row on this project's AVX2 CPU.
            return self.torch.from_numpy(np.ascontiguousarray(np.sort(view, axis=-1)[:, ::-1]))
        return self.torch.sort(x, dim=-1, descending=True).values

    def host_view(self, x):
        # numpy reads CPU float32/float64/bool/int64 tensors without a copy; it has no bfloat16.
        if x.device.type != "cpu" or x.dtype not in (self.torch.float32, self.torch.float64):
            return None
        return x.detach().numpy()

    def to_host(self, x):
        return x.detach().to(dtype=self.torch.float32, device="cpu").numpy()

    def from_host(self, x, like):
        tensor = self.torch.from_numpy(np.ascontiguousarray(x))
        return tensor if like.device.type == "cpu" else tensor.to(like.device)


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


_NUMPY_OPS = NumpyOps()


# -- settings ---------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # numbers.Real covers int, float and numpy's scalars (np.float32 is not a float subclass).
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_number(
    name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool, hint: str = "",
    optional: bool = False, allow_inf: bool = False,
) -> float | None:
    """``value`` as a float after checking it; ``None`` only when ``optional``."""
    if value is None and optional:
        return None
    if not _is_number(value) or math.isnan(value):
        raise ValueError(f"`{name}` has to be a number, got {value!r}.{(' ' + hint) if hint else ''}")
    value = float(value)
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"`{name}` has to be finite, got {value!r}.{(' ' + hint) if hint else ''}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
        raise ValueError(f"`{name}` has to be {bound}, got {value!r}.{(' ' + hint) if hint else ''}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` has to be True or False, got {value!r}.")
    return bool(value)


@dataclass(frozen=True)
class DecodingSettings:
    """What the user controls on top of the heads' predictions.

    Args:
        temperature_scale: ``T_final = T_pred * temperature_scale``; 0 means greedy decoding.
        top_p_scale: ``P_final = clamp(P_pred * top_p_scale, 0, 1)``.
        min_temperature / max_temperature: optional bounds on ``T_final`` (not applied when greedy;
            ``max_temperature=inf`` is the same as no bound).
        fallback_temperature / fallback_top_p: used in place of the heads' prediction for a row whose
            hidden state or head output is NaN/inf (scales and bounds still apply).
        top_k / min_p: optional filters applied after the temperature, before the nucleus.
        use_temperature_head / use_top_p_head: switch a head off (T_pred = 1 or P_pred = 1).

    Numbers may be Python or numpy scalars; they are stored as Python floats.
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
        checked = {
            "temperature_scale": _check_number(
                "temperature_scale", self.temperature_scale, low=0.0, low_open=False,
                hint="Use 0 for greedy decoding, 1 to use the heads as they are."),
            "top_p_scale": _check_number("top_p_scale", self.top_p_scale, low=0.0, low_open=True,
                                         hint="Use 1 to use the heads as they are."),
            "min_temperature": _check_number("min_temperature", self.min_temperature, low=0.0, low_open=True,
                                             optional=True),
            "max_temperature": _check_number("max_temperature", self.max_temperature, low=0.0, low_open=True,
                                             optional=True, allow_inf=True),
            "fallback_temperature": _check_number("fallback_temperature", self.fallback_temperature, low=0.0,
                                                  low_open=True),
            "fallback_top_p": _check_number("fallback_top_p", self.fallback_top_p, low=0.0, high=1.0, low_open=True),
            "min_p": _check_number("min_p", self.min_p, low=0.0, high=1.0, low_open=False, optional=True),
            "use_temperature_head": _check_bool("use_temperature_head", self.use_temperature_head),
            "use_top_p_head": _check_bool("use_top_p_head", self.use_top_p_head),
        }
        if self.min_temperature is not None and self.max_temperature is not None and self.min_temperature > self.max_temperature:
            raise ValueError(
                f"`min_temperature` ({self.min_temperature}) is larger than `max_temperature` ({self.max_temperature}); "
                "swap them or drop one."
            )
        top_k = self.top_k
        if top_k is not None and (not isinstance(top_k, numbers.Integral) or isinstance(top_k, (bool, np.bool_)) or top_k < 0):
            raise ValueError(f"`top_k` has to be a non-negative integer (0 or None disables it), got {top_k!r}.")
        checked["top_k"] = None if top_k is None else int(top_k)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def greedy(self) -> bool:
        return self.temperature_scale == GREEDY

    @property
    def filters(self) -> tuple[ScoreFilter, ...]:
        """The optional filters, in the method's order (top-k, then min-p)."""
        return (*((TopK(self.top_k),) if self.top_k else ()), *((MinP(self.min_p),) if self.min_p else ()))

    def for_trained_heads(self, trained: Collection[str]) -> "DecodingSettings":
        """These settings with every head the artifact did not train (``trained``: its
        ``trained_heads``) switched off, so that head's fallback value applies. The one rule every
        backend follows (strategies, :class:`~deco_middleware.hf.LearnedDecoding`, the vLLM plugin)."""
        changes = {}
        if "temperature" not in trained and self.use_temperature_head:
            changes["use_temperature_head"] = False
        if "top_p" not in trained and self.use_top_p_head:
            changes["use_top_p_head"] = False
        return replace(self, **changes) if changes else self


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


# -- the score transforms ---------------------------------------------------------------------------


def warp_temperature(scores: Array, temperature: Array) -> Array:
    """Divide each row by its own temperature; a row with temperature 0 keeps only its argmax."""
    ops = ops_for(scores)
    greedy_rows = temperature <= 0
    host_scores, host_temperature = ops.host_view(scores), ops.host_view(temperature)
    if host_scores is not None and host_temperature is not None:
        # The same IEEE division in numpy, in the calling thread (see nucleus_filter).
        divided = ops.from_host(host_scores / np.clip(host_temperature, _MIN_DIVISOR, None)[:, None], scores)
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


@runtime_checkable
class ScoreFilter(Protocol):
    """One filter of a row's scores (engine-agnostic through :func:`ops_for`); never edits ``scores`` in place."""

    def apply(self, scores: Any) -> Any: ...


@dataclass(frozen=True)
class TopK:
    """Keep each row's ``k`` highest scores (ties at the boundary are kept)."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k < 1:
            raise ValueError(f"`k` has to be a positive integer, got {self.k!r}.")

    def apply(self, scores: Array) -> Array:
        return top_k_filter(scores, int(self.k))


@dataclass(frozen=True)
class MinP:
    """Drop tokens whose probability is below ``p`` times the row's top probability."""

    p: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _check_number("p", self.p, low=0.0, high=1.0, low_open=False))

    def apply(self, scores: Array) -> Array:
        return min_p_filter(scores, self.p)


# -- the nucleus ------------------------------------------------------------------------------------


def _check_top_p(scores: Any, top_p: Any) -> None:
    if tuple(top_p.shape) != (scores.shape[0],):
        raise ValueError(
            f"`top_p` must hold one value per row, shape [{scores.shape[0]}], got shape {list(top_p.shape)}."
        )
    host = ops_for(top_p).host_view(top_p)
    nan = bool(np.isnan(host).any()) if host is not None else bool((top_p != top_p).any())
    if nan:
        raise ValueError("`top_p` holds NaN; every row needs a top-p in [0, 1] (1 keeps every token).")


def nucleus_filter_reference(scores: Array, top_p: Array) -> tuple[Array, Array]:
    """Keep each row's smallest set of most likely tokens whose mass reaches that row's ``top_p``.

    Tokens are ranked by probability, ties by vocabulary index. The token that crosses the threshold
    is kept, and so is the most likely token even when ``top_p`` is 0. Rows with ``top_p >= 1`` are
    left untouched. Returns the filtered scores and each row's nucleus size (finite tokens kept).
    Reference implementation: one full sort of every row.
    """
    ops_for(scores)
    _check_top_p(scores, top_p)
    return _nucleus_reference(scores, top_p)


def _nucleus_reference(scores: Array, top_p: Array) -> tuple[Array, Array]:
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
    Rows whose mass never reaches ``top_p`` (rounding) go through the reference itself.

    When the engine offers a zero-copy numpy view (CPU float32/float64 torch tensors), everything
    after the engine's own softmax runs in numpy on the same memory. Why: each torch operation over
    a [batch, vocab] tensor is one parallel region, and on a CPU shared with other work a region
    waits for a descheduled worker thread (measured ~12 ms per operation with 2 threads on this
    project's loaded 2-core machine, against 0.2-1.6 ms in one thread). The result is on the
    input's engine either way.
    """
    ops = ops_for(scores)
    _check_top_p(scores, top_p)
    host_scores, host_top_p = ops.host_view(scores), ops.host_view(top_p)
    if host_scores is None or host_top_p is None:
        return _NucleusRows(ops, scores, top_p, None, lambda rows: _nucleus_reference(scores[rows], top_p[rows])).run(
            candidates
        )
    if not bool((host_top_p < 1.0).any()):
        return scores, ops.from_host(np.asarray((host_scores > -math.inf).sum(axis=-1)), scores)
    # The engine's softmax, so the probabilities are the reference's (numpy itself: per pending row).
    probs = None if host_scores is scores else ops.host_view(ops.softmax(scores.detach()))

    def reference(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = ops.from_host(rows, scores)
        row_filtered, row_sizes = _nucleus_reference(scores[index], top_p[index])
        return ops.host_view(row_filtered), ops.to_host(row_sizes).astype(np.int64)

    filtered, sizes = _NucleusRows(_NUMPY_OPS, host_scores, host_top_p, probs, reference).run(candidates)
    if filtered is host_scores:
        return scores, ops.from_host(sizes, scores)
    return ops.from_host(filtered, scores), ops.from_host(sizes, scores)


class _NucleusRows:
    """The fast nucleus on one engine: the rows still open move from window to window.

    ``filtered`` starts as a row of ``-inf`` per row and is filled in row by row (never ``scores``
    itself); ``sizes`` collects each row's nucleus size. ``probs`` is ``softmax(scores)`` when
    already known.
    """

    def __init__(self, ops: ArrayOps[Any], scores: Any, top_p: Any, probs: Any, reference: Callable[[Any], Any]) -> None:
        self.ops, self.scores, self.top_p, self.probs, self.reference = ops, scores, top_p, probs, reference

    def run(self, candidates: tuple[int, ...]) -> tuple[Any, Any]:
        ops, scores, top_p = self.ops, self.scores, self.top_p
        batch, vocab = scores.shape
        pending = ops.nonzero(top_p < 1.0)
        if len(pending) == 0:
            return scores, ops.count_last(scores > -math.inf)
        self.sizes = ops.zeros_index(batch, scores)
        self.filtered = ops.full_like(scores, -math.inf)
        if len(pending) < batch:
            closed = ops.nonzero(top_p >= 1.0)
            self.filtered[closed] = scores[closed]
            self.sizes[closed] = ops.count_last(scores[closed] > -math.inf)
            pending_probs = ops.softmax(scores[pending]) if self.probs is None else self.probs[pending]
        else:
            pending_probs = ops.softmax(scores) if self.probs is None else self.probs
        for number, window in enumerate(candidates):
            k = min(window, vocab)
            if k >= vocab or len(pending) == 0:
                break
            step = self._first_window if number == 0 else self._value_window
            pending, pending_probs = step(pending, pending_probs, k)
        if len(pending):
            pending, pending_probs = self._full_value_sort(pending, pending_probs)
        if len(pending):
            row_filtered, row_sizes = self.reference(pending)
            self.filtered[pending] = row_filtered
            self.sizes[pending] = row_sizes
        return self.filtered, self.sizes

    def _still_open(self, pending: Any, pending_probs: Any, resolved: Any) -> tuple[Any, Any]:
        still = self.ops.nonzero(~resolved)
        if len(still) == len(pending):  # copy the open rows' probabilities only when some closed
            return pending, pending_probs
        return pending[still], pending_probs[still]

    def _keep_by_threshold(self, rows: Any, probs: Any, threshold: Any, size: Any) -> None:
        row_scores = self.scores[rows]
        keep = _keep_by_threshold(self.ops, probs, threshold, size)
        self.filtered[rows] = self.ops.masked_fill(row_scores, ~keep, -math.inf)
        self.sizes[rows] = self.ops.count_last(keep & (row_scores > -math.inf))

    def _first_window(self, pending: Any, pending_probs: Any, k: int) -> tuple[Any, Any]:
        """The k most likely tokens with their indices: most rows' nucleus is their first n."""
        ops = self.ops
        top_values, top_indices = ops.topk(pending_probs, k)  # [rows, k], descending
        cumulative = ops.cumsum64(top_values)
        row_top_p = ops.to64(self.top_p[pending])
        resolved = cumulative[:, -1] >= row_top_p
        done = ops.nonzero(resolved)
        if len(done):
            values, indices = top_values[done], top_indices[done]
            size, threshold = _nucleus_size(ops, values, cumulative[done], row_top_p[done])
            following = ops.take_last(values, ops.clip(size, None, k - 1))
            # The window's first n tokens are the nucleus unless the (n+1)-th ties the n-th (which
            # tied tokens the reference keeps depends on their vocabulary order) or the window ends at n.
            clean = (size < k) & (following[:, 0] < threshold[:, 0])
            clean_at = ops.nonzero(clean)
            if len(clean_at):
                self._write_prefix(pending[done][clean_at], indices[clean_at], size[clean_at])
            tied_at = ops.nonzero(~clean)
            if len(tied_at):
                at = done[tied_at]
                self._keep_by_threshold(pending[at], pending_probs[at], threshold[tied_at], size[tied_at])
        return self._still_open(pending, pending_probs, resolved)

    def _write_prefix(self, rows: Any, indices: Any, size: Any) -> None:
        """Copy each row's first ``size`` window tokens into its row of ``-inf``."""
        ops = self.ops
        width = int(size.max())
        keep_at = ops.arange(width, self.scores)[None, :] < size[:, None]
        # Padding columns repeat the row's top token, so every row writes `width` cells.
        columns = ops.where(keep_at, indices[:, :width], indices[:, :1])
        kept_scores = self.scores[rows[:, None], columns]
        self.filtered[rows[:, None], columns] = kept_scores
        self.sizes[rows] = ops.count_last(keep_at & (kept_scores > -math.inf))

    def _value_window(self, pending: Any, pending_probs: Any, k: int) -> tuple[Any, Any]:
        """Larger windows: the k largest values only (no indices), then keep by threshold."""
        ops = self.ops
        return self._from_sorted_values(pending, pending_probs, ops.topk_values(pending_probs, k))

    def _full_value_sort(self, pending: Any, pending_probs: Any) -> tuple[Any, Any]:
        """Nuclei larger than the last window: sort every value of the row (still no index sort)."""
        return self._from_sorted_values(pending, pending_probs, self.ops.sort_values_desc(pending_probs))

    def _from_sorted_values(self, pending: Any, pending_probs: Any, sorted_values: Any) -> tuple[Any, Any]:
        ops = self.ops
        cumulative = ops.cumsum64(sorted_values)
        row_top_p = ops.to64(self.top_p[pending])
        resolved = cumulative[:, -1] >= row_top_p
        done = ops.nonzero(resolved)
        if len(done):
            size, threshold = _nucleus_size(ops, sorted_values[done], cumulative[done], row_top_p[done])
            self._keep_by_threshold(pending[done], pending_probs[done], threshold, size)
        return self._still_open(pending, pending_probs, resolved)


# -- one decoding step ------------------------------------------------------------------------------


@dataclass
class RowDecisions:
    """What a predictor decides for one step, one entry per row (numpy).

    ``temperature`` float64: 0 is a greedy row (argmax only). ``top_p`` float64 in (0, 1]
    (1: no nucleus). ``fallback`` bool: the row used the fallback (non-finite hidden state or head
    output). ``filters`` apply in order after the temperature, before the nucleus, to every row.
    """

    temperature: np.ndarray
    top_p: np.ndarray
    fallback: np.ndarray
    filters: tuple[ScoreFilter, ...] = ()


class Predictor(Protocol):
    """Decides each row's temperature, top-p and filters for one step.

    ``hidden``: float32 ``[B, H]`` final-norm hidden state (``None`` when ``uses_hidden_state`` is
    False); ``logits``: float32 ``[B, V]`` raw LM-head logits.
    """

    uses_hidden_state: bool

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions: ...


def _rows(value: float, batch: int) -> np.ndarray:
    return np.full(batch, value, dtype=np.float64)


@dataclass(frozen=True)
class StaticPredictor:
    """One temperature and top-p for every row and step (``temperature=0`` is greedy), plus filters."""

    temperature: float
    top_p: float = 1.0
    filters: tuple[ScoreFilter, ...] = ()
    uses_hidden_state: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", _check_number(
            "temperature", self.temperature, low=0.0, low_open=False, hint="Use 0 for greedy decoding."))
        object.__setattr__(self, "top_p", _check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True))
        object.__setattr__(self, "filters", tuple(self.filters))

    @property
    def greedy(self) -> bool:
        return self.temperature == GREEDY

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        batch = logits.shape[0]
        return RowDecisions(_rows(self.temperature, batch), _rows(self.top_p, batch), np.zeros(batch, dtype=bool),
                            self.filters)


@dataclass(frozen=True)
class EntropyTemperaturePredictor:
    """EDT (Zhang et al. 2024): ``T = T0 * N ** (theta / H)``, H the entropy (nats) of softmax(logits); P = 1.

    Confident steps (small H) get a temperature near 0, uncertain ones approach ``T0``; the
    temperature is floored at ``min_temperature`` so a one-hot distribution does not divide by ~0.
    """

    base_temperature: float = 1.0
    exponent_base: float = 0.8
    theta: float = 1.0
    min_temperature: float = 0.05
    uses_hidden_state: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        for name in ("base_temperature", "exponent_base", "theta", "min_temperature"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"`{name}` has to be a finite number, got {value!r}.")
            object.__setattr__(self, name, float(value))
        if not self.base_temperature > 0:
            raise ValueError(f"`base_temperature` has to be > 0, got {self.base_temperature!r}.")
        if not 0 < self.exponent_base < 1:
            raise ValueError(f"`exponent_base` has to be in (0, 1), got {self.exponent_base!r}.")
        if not self.theta > 0:
            raise ValueError(f"`theta` has to be > 0, got {self.theta!r}.")
        if not self.min_temperature >= 0:
            raise ValueError(f"`min_temperature` has to be >= 0, got {self.min_temperature!r}.")

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        # float64 from the float32 logits: the entropy of a 49k-token row sums many small terms.
        shifted = np.asarray(logits, dtype=np.float64)
        shifted = shifted - shifted.max(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            probs = np.exp(log_probs)
            entropy = -(probs * np.where(np.isfinite(log_probs), log_probs, 0.0)).sum(axis=-1)
            exponent = self.theta / np.maximum(entropy, 1e-6)
            temperature = self.base_temperature * np.exp(exponent * math.log(self.exponent_base))
        temperature = np.maximum(temperature, self.min_temperature)
        bad = ~np.isfinite(temperature)
        temperature = np.where(bad, self.base_temperature, temperature)
        batch = logits.shape[0]
        return RowDecisions(temperature, _rows(1.0, batch), bad)


class LearnedPredictor:
    """The trained heads on the hidden state and raw logits, resolved with the user's settings.

    Args:
        heads: loaded :class:`~deco_middleware.heads.artifact.DecodingHeads` (anything with
            ``run(hidden, logits) -> (temperature, top_p)``).
        settings: scales, bounds, fallbacks, optional filters and heads on/off.
    """

    uses_hidden_state = True

    def __init__(self, heads: Any, settings: DecodingSettings | None = None) -> None:
        if heads is None:
            raise ValueError("LearnedPredictor needs heads: DecodingHeads.from_pretrained(...).")
        self.heads = heads
        self.settings = settings if settings is not None else DecodingSettings()
        self._filters = self.settings.filters

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        if hidden is None:
            from .errors import HiddenStateUnavailableError

            raise HiddenStateUnavailableError("The learned heads need the hidden state; none was captured this step.")
        temperature_pred, top_p_pred = self.heads.run(hidden, logits)
        resolved = resolve_decoding(temperature_pred, top_p_pred, np.isfinite(hidden).all(axis=-1), self.settings)
        return RowDecisions(
            np.asarray(resolved.temperature, dtype=np.float64),
            np.asarray(resolved.top_p, dtype=np.float64),
            np.asarray(resolved.fallback, dtype=bool),
            self._filters,
        )

    def __repr__(self) -> str:
        return f"LearnedPredictor({self.heads!r}, {self.settings!r})"


@dataclass
class StepOutput(Generic[Array]):
    """What :func:`decode_step` hands back: the scores to sample from and the per-row decisions applied."""

    scores: Array  # [B, V], same engine/type as the input scores
    temperature: np.ndarray  # float64 [B] applied
    top_p: np.ndarray  # float64 [B] applied
    fallback: np.ndarray  # bool [B]: fallback T/P, or a non-finite row (see `nonfinite`)
    nucleus_size: np.ndarray  # int64 [B] finite tokens kept (0 for a non-finite row)
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # bool [B]: no distribution


def _check_decisions(decisions: RowDecisions, batch: int) -> None:
    for name in ("temperature", "top_p", "fallback"):
        value = getattr(decisions, name)
        if np.shape(value) != (batch,):
            raise ValueError(f"The predictor's `{name}` must have shape [{batch}], got {list(np.shape(value))}.")


def decode_step(
    predictor: Predictor, scores: Array, *, raw_logits: Array | None = None, hidden: Array | None = None,
    nucleus: bool = True,
) -> StepOutput[Array]:
    """One decoding step: penalised ``scores`` (numpy or torch) -> predict -> divide by T -> filters -> nucleus.

    Args:
        predictor: decides T, P and filters per row from ``hidden`` and ``raw_logits``.
        scores: ``[B, V]`` the scores to shape (the raw logits after any penalties); never edited.
        raw_logits: ``[B, V]`` the LM head's raw logits the predictor sees (default: ``scores``).
        hidden: ``[B, H]`` the final-norm hidden state (needed when ``predictor.uses_hidden_state``).
        nucleus: ``False`` stops before the nucleus (for adapters that split the step in two, like
            the Hugging Face processor pair); finish with :func:`nucleus_step`.

    The temperature divides in float32 (the applied value is reported in float64). A row whose
    scores hold a NaN or +inf or no finite value comes back with no finite entry, ``fallback`` and
    ``nonfinite`` set and ``nucleus_size`` 0; :func:`draw` returns ``-1`` for it.
    """
    ops = ops_for(scores)
    batch = scores.shape[0]
    logits_host = ops_for(raw_logits).to_host(raw_logits) if raw_logits is not None else ops.to_host(scores)
    hidden_host = ops_for(hidden).to_host(hidden) if hidden is not None and predictor.uses_hidden_state else None
    decisions = predictor.predict(hidden_host, logits_host)
    _check_decisions(decisions, batch)
    temperature = np.asarray(decisions.temperature, dtype=np.float64)
    top_p = np.asarray(decisions.top_p, dtype=np.float64)
    # A NaN propagates through the row maximum, so one [B, V] reduction finds every unusable row.
    nonfinite = ~np.isfinite(ops.to_host(ops.max_last(scores))[:, 0])
    fallback = np.asarray(decisions.fallback, dtype=bool) | nonfinite
    shaped = _without_rows(ops, scores, nonfinite, 0.0)  # zeros for the step: no NaN warnings on the way
    shaped = warp_temperature(shaped, ops.from_host(temperature.astype(np.float32), scores))
    for score_filter in decisions.filters:
        shaped = score_filter.apply(shaped)
    shaped = _without_rows(ops, shaped, nonfinite, -math.inf)
    kept = ops.to_host(ops.count_last(shaped > -math.inf)).astype(np.int64)
    step = StepOutput(shaped, temperature, top_p, fallback, kept, nonfinite)
    return nucleus_step(step) if nucleus else step


def nucleus_step(step: StepOutput[Array], scores: Array | None = None) -> StepOutput[Array]:
    """The last part of :func:`decode_step`: each row's nucleus with its ``step.top_p``.

    ``scores`` defaults to ``step.scores`` (an adapter may hand back what ran in between).
    """
    scores = step.scores if scores is None else scores
    ops = ops_for(scores)
    work = _without_rows(ops, scores, step.nonfinite, 0.0)
    # float32 like the head outputs, so 0.9 keeps the same threshold on every backend.
    filtered, nucleus_size = nucleus_filter(work, ops.from_host(step.top_p.astype(np.float32), scores))
    filtered = _without_rows(ops, filtered, step.nonfinite, -math.inf)
    sizes = ops.to_host(nucleus_size).astype(np.int64)  # exact: sizes stay below 2**24
    sizes = np.where(step.nonfinite, 0, sizes)
    return StepOutput(filtered, step.temperature, step.top_p, step.fallback, sizes, step.nonfinite)


def _without_rows(ops: ArrayOps[Any], scores: Any, rows: np.ndarray, value: float) -> Any:
    """``scores`` with the rows flagged in ``rows`` set to ``value`` (``scores`` itself when none is)."""
    if not rows.any():
        return scores
    return ops.masked_fill(scores, ops.from_host(rows, scores)[:, None], value)


def draw(scores: Any, uniforms: np.ndarray) -> np.ndarray:
    """One token per row: inverse-CDF over each row's finite entries with that row's float64 uniform.

    Only each row's finite scores (its nucleus, after the filters) enter the float64 exponentials and
    the cumulative sum; the -inf entries would add exact zeros to a full-vocabulary CDF, so the drawn
    token is the same as with it, at the cost of the nucleus instead of the vocabulary. A row with a
    single finite entry (greedy) returns it whatever the uniform; a row with none returns ``-1``.
    Returns int64 ``[B]``.
    """
    host = ops_for(scores).to_host(scores)
    uniforms = np.asarray(uniforms, dtype=np.float64)
    if uniforms.shape != (host.shape[0],):
        raise ValueError(f"`uniforms` must hold one value per row, shape [{host.shape[0]}], got {list(uniforms.shape)}.")
    chosen = np.full(host.shape[0], NO_TOKEN, dtype=np.int64)
    for row in range(host.shape[0]):
        kept = np.flatnonzero(host[row] > -np.inf)
        if len(kept) == 1:
            chosen[row] = kept[0]
            continue
        if len(kept) == 0:
            continue
        values = host[row, kept].astype(np.float64)
        cdf = np.cumsum(np.exp(values - values.max()))
        # side="right": the first token whose cumulative mass exceeds the draw.
        position = min(int(np.searchsorted(cdf, uniforms[row] * cdf[-1], side="right")), len(kept) - 1)
        chosen[row] = kept[position]
    return chosen


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed from ``seed`` and any labels (stable across runs, processes and Python versions)."""
    digest = hashlib.sha256("|".join(str(p) for p in (seed, *labels)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def row_seeds(seed: int, count: int, *labels: object) -> list[int]:
    """The seeds of ``count`` rows: row ``k`` gets ``derive_seed(seed, *labels, k)``. The one seed derivation.

    Conventions every loop follows, so the same seed gives the same tokens on every backend: sample
    ``k`` of prompt ``i`` in a batch is ``row_seeds(seed, samples, i)[k]`` (see :func:`batch_seeds`);
    the harness adds its task and problem as labels.
    """
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ValueError(f"`count` has to be a non-negative integer, got {count!r}.")
    return [derive_seed(seed, *labels, k) for k in range(int(count))]


def batch_seeds(seed: int, prompts: int, samples: int = 1) -> list[int]:
    """Per-row seeds of a batch of ``prompts`` x ``samples`` rows, prompt-major (generate()'s row order)."""
    return [s for i in range(prompts) for s in row_seeds(seed, samples, i)]


class RowRandom:
    """One seeded stream of float64 uniforms per row, the same on every backend (numpy PCG64).

    Each row consumes one uniform per step it is decoded, so a row's tokens do not depend on the
    batch size or the other rows.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self._generators = [np.random.Generator(np.random.PCG64(s)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self._generators)

    def next(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """The next uniform of each row in ``rows`` (default: every row), float64 ``[len(rows)]``."""
        generators = self._generators if rows is None else [self._generators[int(r)] for r in rows]
        return np.array([g.random() for g in generators], dtype=np.float64)


__all__ = [
    "GREEDY",
    "NO_TOKEN",
    "ArrayOps",
    "DecodingSettings",
    "EntropyTemperaturePredictor",
    "LearnedPredictor",
    "MinP",
    "Predictor",
    "ResolvedDecoding",
    "RowDecisions",
    "RowRandom",
    "ScoreFilter",
    "StaticPredictor",
    "StepOutput",
    "TopK",
    "batch_seeds",
    "decode_step",
    "derive_seed",
    "draw",
    "min_p_filter",
    "nucleus_filter",
    "nucleus_filter_reference",
    "nucleus_step",
    "ops_for",
    "resolve_decoding",
    "row_seeds",
    "top_k_filter",
    "warp_temperature",
]
