"""Independent HF-processor references for the tests: static, EDT, and a per-row seeded sampler.

They are written from the score transforms of :mod:`deco_middleware.sampling` (``warp_temperature``,
``min_p_filter``, ``nucleus_filter``), not from ``decode_step``, so that ``generate()`` with them is
a second, separate implementation the engine and the learned pair are compared against. They
never edit ``scores`` in place. (Formerly ``deco_middleware/evaluation/processors.py``; only tests
used them.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import transformers

from deco_middleware.sampling import RowRandom, draw, min_p_filter, nucleus_filter, warp_temperature


class StaticDecodingProcessor(transformers.LogitsProcessor):
    r"""Divides every row by one temperature, then optional min-p, then the nucleus with one top-p.

    Args:
        temperature (`float`): strictly positive; use greedy decoding for T = 0.
        top_p (`float`): in (0, 1]; 1 keeps every token.
        min_p (`float`, *optional*): drop tokens below ``min_p`` times the row's top probability.

    >>> import torch
    >>> processor = StaticDecodingProcessor(temperature=0.5, top_p=0.9)
    >>> processor(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[2.0, 1.0, -3.0]])).isinf().tolist()
    [[False, True, True]]
    """

    def __init__(self, temperature: float, top_p: float = 1.0, min_p: float | None = None) -> None:
        if not temperature > 0:
            raise ValueError(f"`temperature` has to be a strictly positive float, got {temperature!r}. "
                             "If you're looking for greedy decoding, use the `greedy` strategy.")
        if not 0 < top_p <= 1:
            raise ValueError(f"`top_p` has to be in (0, 1], got {top_p!r}.")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.min_p = min_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = scores.shape[0]
        scores = warp_temperature(scores, torch.full((rows,), self.temperature, device=scores.device))
        if self.min_p:
            scores = min_p_filter(scores, self.min_p)
        if self.top_p < 1.0:
            scores, _ = nucleus_filter(scores, torch.full((rows,), self.top_p, device=scores.device))
        return scores


class EntropyTemperatureProcessor(transformers.LogitsProcessor):
    r"""Entropy-based dynamic temperature (EDT): each row gets ``T = T0 * N ** (theta / H)``.

    ``H`` is the entropy, in nats, of ``softmax(scores)`` for that row: confident steps (small H) get a
    temperature near 0, uncertain ones approach ``T0``. Zhang et al. 2024 fix ``N = 0.8``; llama.cpp's
    "dynatemp" is the linear variant of the same idea.

    Args:
        base_temperature (`float`): T0, the temperature approached as the entropy grows.
        exponent_base (`float`): N, in (0, 1).
        theta (`float`): how fast the temperature drops as the entropy shrinks; > 0.
        min_temperature (`float`): floor, so a one-hot distribution does not divide by ~0.

    The applied temperatures of each step are kept in ``self.applied`` (one ``[batch]`` tensor per step).

    >>> import torch
    >>> edt = EntropyTemperatureProcessor()
    >>> _ = edt(torch.zeros(2, 1, dtype=torch.long), torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    >>> [round(t, 2) for t in edt.applied[0].tolist()]
    [0.05, 0.82]
    """

    def __init__(
        self, base_temperature: float = 1.0, exponent_base: float = 0.8, theta: float = 1.0, min_temperature: float = 0.05
    ) -> None:
        if not base_temperature > 0:
            raise ValueError(f"`base_temperature` has to be > 0, got {base_temperature!r}.")
        if not 0 < exponent_base < 1:
            raise ValueError(f"`exponent_base` has to be in (0, 1), got {exponent_base!r}.")
        if not theta > 0:
            raise ValueError(f"`theta` has to be > 0, got {theta!r}.")
        self.base_temperature = base_temperature
        self.exponent_base = exponent_base
        self.theta = theta
        self.min_temperature = min_temperature
        self.applied: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # float64 like the engine's predictor, reported in the scores' float32.
        log_probs = torch.log_softmax(scores.double(), dim=-1)
        entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(dim=-1)
        exponent = self.theta / entropy.clamp(min=1e-6)
        temperature = self.base_temperature * torch.exp(exponent * math.log(self.exponent_base))
        temperature = temperature.clamp(min=self.min_temperature).float()
        self.applied.append(temperature)
        return warp_temperature(scores, temperature.to(scores.dtype))


class PerRowSampler(transformers.LogitsProcessor):
    r"""Draws each row's next token with that row's own random stream; only that token stays finite.

    Placed last and run with ``do_sample=False``, generate()'s argmax then picks the drawn token.
    Every row owns a stream seeded like the engine's (``RowRandom``), so a sample does not change
    when the batch size or the other rows in its batch change.

    >>> import torch
    >>> sampler = PerRowSampler([1, 2])
    >>> out = sampler(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5))
    >>> [int(row.isfinite().sum()) for row in out]
    [1, 1]
    """

    def __init__(self, seeds: list[int]) -> None:
        self.random = RowRandom(seeds)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.random):
            raise ValueError(f"PerRowSampler was built for {len(self.random)} rows, got {scores.shape[0]}.")
        chosen = torch.from_numpy(np.asarray(draw(scores, self.random.next())))
        # Only the drawn token stays finite; generate()'s argmax needs nothing else from the scores.
        only_drawn = torch.full_like(scores, -math.inf)
        return only_drawn.scatter(-1, chosen.to(scores.device)[:, None], 0.0)


__all__ = ["EntropyTemperatureProcessor", "PerRowSampler", "StaticDecodingProcessor"]
