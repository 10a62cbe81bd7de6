"""pass@k (the unbiased estimator of Chen et al. 2021), maj@k (self-consistency) and summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n``
    samples, ``c`` of them correct, is correct: ``1 - C(n - c, k) / C(n, k)``."""
    if not 0 <= c <= n:
        raise ValueError(f"Need 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"Need 1 <= k <= n, got k={k}, n={n}.")
    if n - c < k:
        return 1.0
    # The product form avoids huge binomials: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """maj@k of one problem: whether the most frequent answer among the samples is a correct one.

    ``answers[i]`` is sample i's normalised answer (``None``: it gave none, and does not vote);
    ties go to the answer that occurred first. No answer at all counts as wrong.
    """
    if len(answers) != len(correct):
        raise ValueError(f"Need one correctness flag per answer, got {len(answers)} answers and {len(correct)} flags.")
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for position, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, position)
    if not counts:
        return False
    # max() keeps the first maximal key in insertion order, i.e. the earliest-occurring answer.
    winner = max(counts, key=lambda answer: counts[answer])
    return bool(correct[first[winner]])


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 when n < 2)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


class RunningMoments:
    """Count, mean and standard deviation from sums, so per-sample records stay small."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0

    def add_sums(self, count: int, total: float, total_sq: float) -> None:
        self.count += count
        self.total += total
        self.total_sq += total_sq

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        if self.count < 2:
            return 0.0 if self.count else math.nan
        variance = max(self.total_sq / self.count - self.mean**2, 0.0)
        return math.sqrt(variance)


__all__ = ["RunningMoments", "majority_correct", "mean_and_stderr", "pass_at_k"]
