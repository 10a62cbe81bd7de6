"""Decoding baselines from the literature, as predictors of per-row (T, P, filters).

Each baseline is a :class:`~deco_middleware.sampling.Predictor`: it looks at one step's
raw LM-head logits and decides every row's temperature (0 = greedy), top-p and extra score filters;
the decoding step itself (divide by T, filters, nucleus, draw) is the same code for all of them.
None of them reads the hidden state.

- :class:`ConfidenceGatedPredictor`: greedy where the model is sure (max p > tau), else T_high.
- :class:`EntropyAdaptivePredictor`: T_low where the normalised entropy H / log|V| is below a
  threshold, else T_high (SimpleDeco's ``entropy_adaptive``).
- :class:`EntropyContinuousPredictor`: T = T_min + (T_max - T_min) * H / log|V| (SimpleDeco's
  ``entropy_continuous``).
- :class:`TopNSigma` (Tang et al. 2024, arXiv 2411.07641): keep logits >= max - n * sigma, sigma the
  standard deviation of the row's (finite) logits; the kept set does not depend on the temperature.
- :class:`PLess` (arXiv 2509.23234): keep tokens whose probability is >= sum(p^2), the probability
  that two draws agree; no hyperparameter.

Strategy names (parsed by :func:`parse_baseline`, registered into the strategy vocabulary):
``confidence:TAU,T_HIGH``, ``entropy-adaptive:THRESHOLD,T_LOW,T_HIGH``,
``entropy-continuous:T_MIN,T_MAX``, ``top-n-sigma:N,T``, ``p-less:T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sampling import RowDecisions, ops_for

Array = Any


# -- score filters (engine-agnostic, never edit scores in place) ----------------------------------


@dataclass(frozen=True)
class TopNSigma:
    """Keep each row's scores >= max - n * sigma (sigma: standard deviation of the row's finite scores).

    Args:
        n: how many standard deviations below the top score a token may be (the paper's n = 1).

    >>> import numpy as np
    >>> TopNSigma(1.0).apply(np.array([[3.0, 2.0, 0.0, -1.0]]))
    array([[ 3.,  2., -inf, -inf]])
    """

    n: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.n, (int, float)) and math.isfinite(self.n) and self.n >= 0):
            raise ValueError(f"`n` has to be a non-negative number of standard deviations, got {self.n!r}.")

    def apply(self, scores: Array) -> Array:
        ops = ops_for(scores)
        finite = ops.isfinite(scores)
        count = ops.count_last(finite)
        values = ops.where(finite, scores, ops.full_like(scores, 0.0))
        mean = values.sum(-1) / count
        centred = ops.where(finite, scores - mean[:, None], ops.full_like(scores, 0.0))
        sigma = ((centred * centred).sum(-1) / count) ** 0.5
        threshold = ops.max_last(scores) - self.n * sigma[:, None]
        return ops.masked_fill(scores, scores < threshold, -math.inf)


@dataclass(frozen=True)
class PLess:
    """Keep each row's tokens whose probability is at least sum(p^2) (the most likely token always stays).

    >>> import numpy as np
    >>> PLess().apply(np.log(np.array([[0.6, 0.3, 0.1]])))  # sum p^2 = 0.46
    array([[-0.51082562,        -inf,        -inf]])
    """

    def apply(self, scores: Array) -> Array:
        ops = ops_for(scores)
        probs = ops.softmax(scores)
        threshold = (probs * probs).sum(-1)
        drop = (probs < threshold[:, None]) & ~ops.argmax_mask(scores)
        return ops.masked_fill(scores, drop, -math.inf)


# -- predictors -------------------------------------------------------------------------------------


def _softmax64(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def normalized_entropy(logits: np.ndarray) -> np.ndarray:
    """H(softmax(logits)) / log|V| per row, in [0, 1] (float64)."""
    probs = _softmax64(logits)
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(axis=-1) / math.log(logits.shape[-1])


def _check_temperature(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0 (0 = greedy)" if allow_zero else "> 0"
        raise ValueError(f"`{name}` has to be a number {bound}, got {value!r}.")


def _decisions(temperature: np.ndarray, filters: tuple[Any, ...] = ()) -> RowDecisions:
    rows = temperature.shape[0]
    return RowDecisions(temperature=temperature.astype(np.float64), top_p=np.ones(rows),
                        fallback=np.zeros(rows, dtype=bool), filters=filters)


@dataclass(frozen=True)
class ConfidenceGatedPredictor:
    """Greedy where the model's top probability (at T = 1) exceeds ``threshold``, else ``high_temperature``; P = 1."""

    threshold: float = 0.9
    high_temperature: float = 1.0
    uses_hidden_state: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
            raise ValueError(f"`threshold` has to be a probability in [0, 1], got {self.threshold!r}.")
        _check_temperature("high_temperature", self.high_temperature)

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        confident = _softmax64(logits).max(axis=-1) > self.threshold
        return _decisions(np.where(confident, 0.0, self.high_temperature))


@dataclass(frozen=True)
class EntropyAdaptivePredictor:
    """``low_temperature`` where H / log|V| < ``threshold``, else ``high_temperature``; P = 1."""

    threshold: float = 0.15
    low_temperature: float = 0.3
    high_temperature: float = 1.0
    uses_hidden_state: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
            raise ValueError(f"`threshold` has to be a normalised entropy in [0, 1], got {self.threshold!r}.")
        _check_temperature("low_temperature", self.low_temperature, allow_zero=True)
        _check_temperature("high_temperature", self.high_temperature)

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        sure = normalized_entropy(logits) < self.threshold
        return _decisions(np.where(sure, self.low_temperature, self.high_temperature))


@dataclass(frozen=True)
class EntropyContinuousPredictor:
    """``T = min_temperature + (max_temperature - min_temperature) * H / log|V|``; P = 1."""

    min_temperature: float = 0.3
    max_temperature: float = 1.0
    uses_hidden_state: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        _check_temperature("min_temperature", self.min_temperature)
        _check_temperature("max_temperature", self.max_temperature)
        if self.min_temperature > self.max_temperature:
            raise ValueError(f"`min_temperature` ({self.min_temperature}) is larger than `max_temperature` "
                             f"({self.max_temperature}); swap them.")

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        span = self.max_temperature - self.min_temperature
        return _decisions(self.min_temperature + span * normalized_entropy(logits))


@dataclass(frozen=True)
class FilteredStaticPredictor:
    """One temperature for every row, then ``filters`` (top-n-sigma, p-less); P = 1."""

    temperature: float
    filters: tuple[Any, ...] = ()
    uses_hidden_state: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        _check_temperature("temperature", self.temperature)

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        return _decisions(np.full(logits.shape[0], float(self.temperature)), self.filters)


@dataclass(frozen=True)
class WithFilters:
    """Another predictor's decisions with ``filters`` appended (applied after its own, before the nucleus).

    ``autodeco-t+p-less`` is the learned temperature head with the exact p-less filter: the rule that
    ``deco train top-p`` distils into the top-p head, run as the rule itself.
    """

    inner: Any
    filters: tuple[Any, ...]

    @property
    def uses_hidden_state(self) -> bool:
        return bool(self.inner.uses_hidden_state)

    def predict(self, hidden: np.ndarray | None, logits: np.ndarray) -> RowDecisions:
        decided = self.inner.predict(hidden, logits)
        return RowDecisions(decided.temperature, decided.top_p, decided.fallback, (*decided.filters, *self.filters))


# -- names ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineSpec:
    """A parsed baseline name: ``family`` and its parameters in the family's order."""

    family: str
    values: tuple[float, ...]

    @property
    def key(self) -> str:
        """The canonical name (equal baselines share cached results)."""
        return f"{self.family}:" + ",".join(f"{v:g}" for v in self.values)

    def predictor(self) -> Any:
        return BASELINES[self.family].build(*self.values)


@dataclass(frozen=True)
class BaselineFamily:
    arguments: tuple[str, ...]
    defaults: tuple[float, ...]
    build: Callable[..., Any]
    help: str


BASELINES: dict[str, BaselineFamily] = {
    "confidence": BaselineFamily(
        ("TAU", "T_HIGH"), (0.9, 1.0), lambda tau, high: ConfidenceGatedPredictor(tau, high),
        "greedy when the top probability > TAU, else temperature T_HIGH"),
    "entropy-adaptive": BaselineFamily(
        ("THRESHOLD", "T_LOW", "T_HIGH"), (0.15, 0.3, 1.0),
        lambda threshold, low, high: EntropyAdaptivePredictor(threshold, low, high),
        "T_LOW when H/log|V| < THRESHOLD, else T_HIGH"),
    "entropy-continuous": BaselineFamily(
        ("T_MIN", "T_MAX"), (0.3, 1.0), lambda low, high: EntropyContinuousPredictor(low, high),
        "T = T_MIN + (T_MAX - T_MIN) * H/log|V|"),
    "top-n-sigma": BaselineFamily(
        ("N", "T"), (1.0, 1.0), lambda n, temperature: FilteredStaticPredictor(temperature, (TopNSigma(n),)),
        "keep logits >= max - N * sigma, sample at temperature T"),
    "p-less": BaselineFamily(
        ("T",), (1.0,), lambda temperature: FilteredStaticPredictor(temperature, (PLess(),)),
        "keep tokens with p >= sum(p^2), sample at temperature T"),
}


def parse_baseline(text: str) -> BaselineSpec | None:
    """``"confidence:0.9,1.0"`` -> its spec; ``None`` when ``text`` names no baseline family.

    A bare family name takes its defaults. Wrong parameters fail naming the expected form.
    """
    family, _, body = text.strip().partition(":")
    if family not in BASELINES:
        return None
    entry = BASELINES[family]
    if not body:
        values = entry.defaults
    else:
        try:
            values = tuple(float(x) for x in body.split(","))
        except ValueError:
            values = ()
        if len(values) != len(entry.arguments):
            example = f"{family}:" + ",".join(f"{v:g}" for v in entry.defaults)
            raise ValueError(f"Strategy {text!r}: write {family}:{','.join(entry.arguments)}, e.g. {example}.")
    spec = BaselineSpec(family, values)
    spec.predictor()  # validates the values with the predictor's own messages
    return spec


__all__ = [
    "BASELINES",
    "BaselineFamily",
    "BaselineSpec",
    "ConfidenceGatedPredictor",
    "EntropyAdaptivePredictor",
    "EntropyContinuousPredictor",
    "FilteredStaticPredictor",
    "PLess",
    "TopNSigma",
    "WithFilters",
    "normalized_entropy",
    "parse_baseline",
]
