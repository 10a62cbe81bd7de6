"""Frontier gain: does a strategy beat the static-temperature curve in (pass@k, pass@1)?

Static sampling trades pass@1 for diversity: as T rises pass@k goes up and pass@1 down. The static
curve is greedy (T = 0) and ``static:T,1`` for the sweep's temperatures, in order of T. A strategy's
frontier gain is its pass@1 minus the curve's pass@1 at the strategy's pass@k, read by linear
interpolation. Where several segments of the curve cover that pass@k, the highest one counts (the
curve's upper envelope); beyond the curve's ends the nearest end's pass@1 is used. Both choices
favour the static curve, so a positive gain is not an artefact of the interpolation.

The 95% interval is a paired bootstrap over problems: one resample of problem indices is applied to
the strategy and to every static point alike, so the interval reflects problem difficulty once.
The bootstrap generator is seeded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .strategies import SWEEP_TEMPERATURES

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 12
CONFIDENCE = 0.95

_STATIC_AT_P1 = re.compile(r"static:T=([0-9.]+),P=1$")


def curve_temperature(decoding: str) -> float | None:
    """The temperature of a decoding on the static curve (greedy: 0), else ``None``."""
    if decoding == "greedy":
        return 0.0
    match = _STATIC_AT_P1.fullmatch(decoding)
    if match is None:
        return None
    temperature = float(match.group(1))
    return temperature if any(math.isclose(temperature, t) for t in SWEEP_TEMPERATURES) else None


def static_pass_at_1(curve: Sequence[tuple[float, float]], pass_at_k: float) -> float:
    """The curve's pass@1 at ``pass_at_k``; ``curve`` holds (pass@k, pass@1) points in order of T."""
    if not curve:
        raise ValueError("The static curve needs at least one point.")
    found = []
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        low, high = min(x0, x1), max(x0, x1)
        if low <= pass_at_k <= high:
            found.append(y0 if high == low else y0 + (y1 - y0) * (pass_at_k - x0) / (x1 - x0))
    if found:
        return max(found)
    # Outside the curve: the pass@1 of the end nearest in pass@k (ties: the higher pass@1).
    nearest = min(curve, key=lambda point: (abs(point[0] - pass_at_k), -point[1]))
    return nearest[1]


def frontier_gain(pass_at_1: float, pass_at_k: float, curve: Sequence[tuple[float, float]]) -> float:
    """``pass_at_1`` minus the static curve's pass@1 at ``pass_at_k``."""
    return pass_at_1 - static_pass_at_1(curve, pass_at_k)


@dataclass(frozen=True)
class GainEstimate:
    gain: float
    low: float
    high: float
    static_pass_at_1: float

    def as_dict(self) -> dict[str, float]:
        return {"gain": self.gain, "low": self.low, "high": self.high, "static_pass@1_at_its_pass@k": self.static_pass_at_1}


def _gain_samples(strategy: np.ndarray, curve: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    """Frontier gain on each bootstrap resample; arrays are [problems, 2] of (pass@1, pass@k)."""
    out = np.empty(index.shape[0])
    means = strategy[index].mean(axis=1)  # [B, 2]
    curve_means = [points[index].mean(axis=1) for points in curve]  # each [B, 2]
    for b in range(index.shape[0]):
        points = [(float(m[b, 1]), float(m[b, 0])) for m in curve_means]
        out[b] = frontier_gain(float(means[b, 0]), float(means[b, 1]), points)
    return out


def _per_problem(summary: Any) -> np.ndarray:
    return np.array([(p1, pk) for p1, pk, _ in summary.per_problem], dtype=np.float64)


def _group_means(per_task: dict[str, dict[str, Any]], draws: dict[str, dict[str, np.ndarray]],
                 groups: Mapping[str, Sequence[str]], estimate: Any) -> dict[str, dict[str, Any]]:
    """``{group: {strategy: estimate(point, bootstrap samples)}}``: the mean over the group's tasks of
    every strategy that ran on all of them (the same resampled problems per task as the per-task rows)."""
    out: dict[str, dict[str, Any]] = {}
    for group, tasks in groups.items():
        means: dict[str, Any] = {}
        for name, by_task in draws.items():
            if not tasks or any(task not in by_task for task in tasks):
                continue
            means[name] = {**estimate(name, list(tasks), np.mean(np.stack([by_task[t] for t in tasks]), axis=0)),
                           "tasks": len(tasks)}
        out[group] = means
    return out


def frontier_table(
    results: Mapping[str, Mapping[str, Any]], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any] | None:
    """Frontier gains of every strategy off the static curve, per task and averaged over tasks.

    ``results`` is ``{task: {strategy: DecodingSummary}}``. ``None`` when no task has at least two
    points of the static curve. Tasks without the curve, or strategies with one sample (their
    pass@k is their pass@1), are left out. ``groups`` (``{name: [task, ...]}``) adds the mean over
    each group's tasks (``mean_over_groups``), e.g. in-domain and held-out tasks of one run.
    """
    rng = np.random.default_rng(seed)
    per_task: dict[str, dict[str, Any]] = {}
    by_task_draws: dict[str, dict[str, np.ndarray]] = {}
    curves: dict[str, list[str]] = {}
    for task, by_strategy in results.items():
        points: dict[float, Any] = {}
        for summary in by_strategy.values():
            temperature = curve_temperature(summary.decoding)
            if temperature is not None and summary.per_problem:
                points.setdefault(temperature, summary)
        if len(points) < 2:
            continue
        ordered = [points[t] for t in sorted(points)]
        curves[task] = [s.decoding for s in ordered]
        curve_arrays = [_per_problem(s) for s in ordered]
        problems = curve_arrays[0].shape[0]
        index = rng.integers(0, problems, size=(resamples, problems))
        curve_points = [(float(a[:, 1].mean()), float(a[:, 0].mean())) for a in curve_arrays]
        entries: dict[str, Any] = {}
        for name, summary in by_strategy.items():
            if curve_temperature(summary.decoding) is not None or summary.samples < 2 or not summary.per_problem:
                continue
            values = _per_problem(summary)
            if values.shape[0] != problems:
                continue
            gain = frontier_gain(float(values[:, 0].mean()), float(values[:, 1].mean()), curve_points)
            samples = _gain_samples(values, curve_arrays, index)
            by_task_draws.setdefault(name, {})[task] = samples
            low, high = np.quantile(samples, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
            static = static_pass_at_1(curve_points, float(values[:, 1].mean()))
            entries[name] = GainEstimate(gain, float(low), float(high), static).as_dict()
        per_task[task] = entries
    if not per_task:
        return None

    def gain_estimate(name: str, tasks: list[str], samples: np.ndarray) -> dict[str, float]:
        low, high = np.quantile(samples, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
        return {"gain": float(np.mean([per_task[t][name]["gain"] for t in tasks])), "low": float(low), "high": float(high)}

    table = {
        "static_curve": curves,
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "paired_over": "problems"},
        "tasks": per_task,
        # Only strategies that ran on every task: a mean over a different set of tasks would not compare.
        "mean_over_tasks": _group_means(per_task, by_task_draws, {"all": list(per_task)}, gain_estimate)["all"],
    }
    if groups:
        table["mean_over_groups"] = _group_means(per_task, by_task_draws, groups, gain_estimate)
    return table


def paired_differences(
    results: Mapping[str, Mapping[str, Any]], baseline: str, *, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED, groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any] | None:
    """pass@1 and pass@k of every strategy minus ``baseline``'s, per task and as the mean over tasks,
    each with a 95% paired bootstrap interval over problems (seeded; the same resampled problems for
    every strategy of a task). ``None`` when no task ran ``baseline``."""
    rng = np.random.default_rng(seed)
    quantiles = [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]
    per_task: dict[str, dict[str, Any]] = {}
    by_task_draws: dict[str, dict[str, np.ndarray]] = {}

    def entry(point: np.ndarray, boot: np.ndarray) -> dict[str, float]:
        low, high = np.quantile(boot, quantiles, axis=0)
        return {"pass@1": float(point[0]), "pass@1_low": float(low[0]), "pass@1_high": float(high[0]),
                "pass@k": float(point[1]), "pass@k_low": float(low[1]), "pass@k_high": float(high[1])}

    for task, by_strategy in results.items():
        base = by_strategy.get(baseline)
        if base is None or not base.per_problem:
            continue
        reference = _per_problem(base)
        index = rng.integers(0, reference.shape[0], size=(resamples, reference.shape[0]))
        entries: dict[str, Any] = {}
        for name, summary in by_strategy.items():
            if name == baseline or not summary.per_problem:
                continue
            values = _per_problem(summary)
            if values.shape != reference.shape:
                continue
            difference = values - reference  # [problems, (pass@1, pass@k)]
            boot = difference[index].mean(axis=1)  # [resamples, 2]
            by_task_draws.setdefault(name, {})[task] = boot
            entries[name] = entry(difference.mean(axis=0), boot)
        per_task[task] = entries
    if not per_task:
        return None

    def group_entry(name: str, tasks: list[str], boot: np.ndarray) -> dict[str, float]:
        point = np.mean([[per_task[t][name]["pass@1"], per_task[t][name]["pass@k"]] for t in tasks], axis=0)
        return entry(point, boot)

    table = {"baseline": baseline,
             "bootstrap": {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "paired_over": "problems"},
             "tasks": per_task,
             "mean_over_tasks": _group_means(per_task, by_task_draws, {"all": list(per_task)}, group_entry)["all"]}
    if groups:
        table["mean_over_groups"] = _group_means(per_task, by_task_draws, groups, group_entry)
    return table


__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "GainEstimate",
    "curve_temperature",
    "frontier_gain",
    "frontier_table",
    "paired_differences",
    "static_pass_at_1",
]
