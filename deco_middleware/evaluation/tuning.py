"""Baselines tuned fairly: each family's parameters are chosen on a DEV split of the training tasks.

The dev split is the training tasks (products, basic_arithmetic, chain_sum at their training
configurations, ``training.data.TRAINING_TASKS``) drawn at :data:`DEV_SEED` — neither the training
seed (11) nor the evaluation seed (90210) — with every prompt that also appears in the evaluation
tasks of the run dropped. Every family gets the same budget: :data:`GRID_BUDGET` configurations,
each run on the whole dev split with ``dev_samples`` samples per problem; the configuration with
the best pooled dev pass@1 wins (ties: the earlier grid point). The test set is never looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..baselines import BaselineSpec
from ..strategies import parse_strategy
from .strategies import Decoding

DEV_SEED = 5151
DEV_TASKS = ("products", "basic_arithmetic", "chain_sum")
DEV_PROBLEMS = 40
DEV_SAMPLES = 2
GRID_BUDGET = 6
# EDT's exponent base; the paper's N (T0 comes from the heads' mean temperature on the dev split).
EDT_EXPONENT_BASE = 0.8

# dev-static is searched like the oracle, T first at P=1, then P at the best T.
DEV_STATIC_TEMPERATURES = (0.1, 0.3, 0.5, 0.7)
DEV_STATIC_TOP_PS = (0.8, 0.95)


def _baseline(family: str, *values: float) -> Decoding:
    return parse_strategy(BaselineSpec(family, tuple(float(v) for v in values)).key)


def family_grid(family: str, edt_base_temperature: float | None = None) -> list[Decoding]:
    """The configurations tried for ``family`` (not ``dev-static``, which is searched in two stages)."""
    if family == "confidence":
        return [_baseline("confidence", tau, high) for tau in (0.5, 0.9) for high in (0.5, 0.7, 1.0)]
    if family == "entropy-adaptive":
        return [_baseline("entropy-adaptive", threshold, low, high)
                for threshold in (0.05, 0.15, 0.3) for low, high in ((0.3, 1.0), (0.1, 0.7))]
    if family == "entropy-continuous":
        return [_baseline("entropy-continuous", low, high) for low in (0.1, 0.3) for high in (0.5, 0.7, 1.0)]
    if family == "top-n-sigma":
        return [_baseline("top-n-sigma", 1.0, t) for t in (0.3, 0.5, 0.7, 1.0, 1.5, 2.0)]
    if family == "p-less":
        return [_baseline("p-less", t) for t in (0.3, 0.5, 0.7, 1.0, 1.5, 2.0)]
    if family == "min-p":
        return [parse_strategy(f"min-p:{x:g},{t:g}") for x in (0.05, 0.1, 0.2) for t in (0.7, 1.0)]
    if family == "edt":
        if edt_base_temperature is None:
            raise ValueError("EDT's grid needs T0 (the heads' mean temperature on the dev split).")
        return [parse_strategy(f"edt:{edt_base_temperature:g},{EDT_EXPONENT_BASE:g},{theta:g}")
                for theta in (0.1, 0.2, 0.3, 0.5, 1.0, 2.0)]
    raise ValueError(f"No dev grid for family {family!r}.")


@dataclass(frozen=True)
class TunedChoice:
    """What the dev search picked, and every configuration's pooled dev pass@1 (for the report)."""

    decoding: Decoding
    dev_scores: dict[str, float]
    dev_problems: int
    dev_samples: int

    def as_dict(self) -> dict[str, object]:
        return {"decoding": self.decoding.key, "dev_pass@1": self.dev_scores, "dev_problems": self.dev_problems,
                "dev_samples": self.dev_samples, "dev_seed": DEV_SEED, "dev_tasks": list(DEV_TASKS)}


def pick_best(decodings: Sequence[Decoding], score: Callable[[Decoding], float]) -> tuple[Decoding, dict[str, float]]:
    """The decoding with the highest score (ties: the earliest), and every score by decoding key."""
    if not decodings:
        raise ValueError("Cannot pick from an empty grid.")
    scores: dict[str, float] = {}
    best, best_score = decodings[0], -float("inf")
    for decoding in decodings:
        value = score(decoding)
        scores[decoding.key] = value
        if value > best_score:
            best, best_score = decoding, value
    return best, scores


def select_dev_static(score: Callable[[Decoding], float]) -> tuple[Decoding, dict[str, float]]:
    """T first at P=1 over :data:`DEV_STATIC_TEMPERATURES`, then P over :data:`DEV_STATIC_TOP_PS` at that T."""
    best_t, scores = pick_best([parse_strategy(f"static:{t:g},1") for t in DEV_STATIC_TEMPERATURES], score)
    candidates = [best_t, *(parse_strategy(f"static:{best_t.temperature:g},{p:g}") for p in DEV_STATIC_TOP_PS)]
    best, more = pick_best(candidates, score)
    return best, {**scores, **more}


__all__ = [
    "DEV_PROBLEMS",
    "DEV_SAMPLES",
    "DEV_SEED",
    "DEV_STATIC_TEMPERATURES",
    "DEV_STATIC_TOP_PS",
    "DEV_TASKS",
    "EDT_EXPONENT_BASE",
    "GRID_BUDGET",
    "TunedChoice",
    "family_grid",
    "pick_best",
    "select_dev_static",
]
