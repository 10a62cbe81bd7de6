"""The AutoDeco training loss (METHOD.md), with each reference choice switchable.

For a token with raw logits ``l`` and label ``y``:

- temperature loss: cross-entropy of ``softmax(l / T)`` at ``y``;
- soft top-p loss: ``p = softmax(l / T)`` sorted descending, cumulative sum ``c`` (inclusive, so
  the token that crosses ``P`` keeps a partial weight), mask ``m = exp(-alpha * relu(c - P))``,
  ``p~ = p * m / (sum(p * m) + 1e-9)``, loss ``-log(p~[y] + 1e-9)``; the mask is applied in
  sorted order, which gives the same ``p~[y]`` as mapping it back to vocabulary order;
- each loss is weighted per token by the frozen model's own ``softmax(l)[y]``, detached;
- easy tokens (``argmax(l) == y``) are dropped with probability 0.6, redrawn every step.

Speed (measured: a full sort of [128, 49152] logits was ~55% of a training step on this CPU):
the label's own term needs no sort, its inclusive cumulative mass is the mass of every token with
a larger logit plus its own. Only the denominator ``sum(p * m)`` needs the cumulative mass of
every token; with ``soft_top_p_window = K`` the K most likely tokens get it exactly (``topk``)
and the tail beyond them, whose tokens are individually tiny, is integrated as a continuum:
``sum_tail p_i m(c_i) ~= integral of m(c) dc over [c_K, 1]``, which is off by at most the largest
tail probability. ``None`` keeps the exact full sort.

Reduction: ``sum(weight * kept * loss) / max(1, sum(kept))`` per loss; the total is their sum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .._deps import require

torch = require("torch", purpose="Training heads")

SOFT_TOP_P_EPS = 1e-9
TrainedHeads = Literal["both", "temperature", "top_p"]


@dataclass(frozen=True)
class LossConfig:
    """Args:
    heads: which heads to train; an untrained temperature head counts as T = 1.
    top_p_steepness: alpha of the soft nucleus mask (reference 30).
    weight_by_label_probability: scale each token's loss by the frozen ``softmax(l)[y]`` (detached).
    easy_token_drop: probability of dropping a token whose label is the model's argmax (0 = off).
    top_p_grad_to_temperature: let the top-p loss's gradient reach the temperature head (reference).
    soft_top_p_window: tokens whose cumulative mass the soft nucleus computes exactly (``topk``);
        the tail beyond is integrated (module docstring). ``None`` = full sort, exact and slower.
    """

    heads: TrainedHeads = "both"
    top_p_steepness: float = 30.0
    weight_by_label_probability: bool = True
    easy_token_drop: float = 0.6
    top_p_grad_to_temperature: bool = True
    soft_top_p_window: int | None = 1024

    def __post_init__(self) -> None:
        if self.soft_top_p_window is not None and self.soft_top_p_window < 1:
            raise ValueError(f"`soft_top_p_window` has to be >= 1 or None (full sort), got {self.soft_top_p_window!r}.")
        if self.heads not in ("both", "temperature", "top_p"):
            raise ValueError(f"`heads` must be 'both', 'temperature' or 'top_p', got {self.heads!r}.")
        if not self.top_p_steepness > 0:
            raise ValueError(f"`top_p_steepness` has to be > 0, got {self.top_p_steepness!r} (reference: 30).")
        if not 0.0 <= self.easy_token_drop < 1.0:
            raise ValueError(f"`easy_token_drop` has to be in [0, 1), got {self.easy_token_drop!r} (0 turns it off).")

    @property
    def trains_temperature(self) -> bool:
        return self.heads in ("both", "temperature")

    @property
    def trains_top_p(self) -> bool:
        return self.heads in ("both", "top_p")

    @property
    def trained_names(self) -> list[str]:
        return [name for name, on in (("temperature", self.trains_temperature), ("top_p", self.trains_top_p)) if on]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def soft_top_p_label_probability(
    sorted_logits: Any, label_rank: Any, temperature: Any, top_p: Any, steepness: float
) -> Any:
    """``p~[y]`` of the soft nucleus, for logits already sorted descending and the label's rank."""
    probs = torch.softmax(sorted_logits / temperature.unsqueeze(-1), dim=-1)
    cumulative = probs.cumsum(dim=-1)
    mask = torch.exp(-steepness * torch.relu(cumulative - top_p.unsqueeze(-1)))
    kept = probs * mask
    label_kept = kept.gather(-1, label_rank.unsqueeze(-1)).squeeze(-1)
    return label_kept / (kept.sum(dim=-1) + SOFT_TOP_P_EPS)


def _soft_mask_integral(start: Any, top_p: Any, steepness: float) -> Any:
    """``integral of exp(-alpha * relu(c - P)) dc`` over ``c`` in ``[start, 1]``, per row."""
    start = start.clamp(0.0, 1.0)
    flat_end = torch.minimum(top_p, torch.ones_like(top_p))
    flat = (flat_end - start).clamp(min=0.0)  # where c <= P the mask is 1
    decay_start = torch.maximum(start, top_p)
    decay = (torch.exp(-steepness * (decay_start - top_p)) - torch.exp(-steepness * (1.0 - top_p))) / steepness
    return flat + decay.clamp(min=0.0) * (top_p < 1.0)


def soft_top_p_label_probability_windowed(
    logits: Any, labels: Any, temperature: Any, top_p: Any, steepness: float, window: int | None
) -> Any:
    """``p~[y]`` of the soft nucleus from unsorted ``logits`` [B,V], without a full sort.

    The numerator is exact; the denominator is exact over the ``window`` most likely tokens and
    integrates the tail (module docstring). ``window=None`` or ``>= V`` is exact."""
    vocab = logits.shape[-1]
    scaled = logits / temperature.unsqueeze(-1)
    log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
    probs = torch.exp(scaled - log_norm)
    label_logit = logits.gather(-1, labels.unsqueeze(-1))
    label_prob = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # Inclusive cumulative mass at the label: every token with a larger logit, plus itself.
    label_cumulative = (probs * (logits > label_logit)).sum(dim=-1) + label_prob
    label_kept = label_prob * torch.exp(-steepness * torch.relu(label_cumulative - top_p))
    if window is None or window >= vocab:
        sorted_probs = probs.sort(dim=-1, descending=True).values
        tail = torch.zeros_like(label_prob)
    else:
        top_logits = logits.topk(window, dim=-1).values
        sorted_probs = torch.exp(top_logits / temperature.unsqueeze(-1) - log_norm)
    cumulative = sorted_probs.cumsum(dim=-1)
    head = (sorted_probs * torch.exp(-steepness * torch.relu(cumulative - top_p.unsqueeze(-1)))).sum(dim=-1)
    if window is not None and window < vocab:
        tail = _soft_mask_integral(cumulative[:, -1], top_p, steepness)
    return label_kept / (head + tail + SOFT_TOP_P_EPS)


def hard_nucleus_from_logits(logits: Any, labels: Any, temperature: Any, top_p: Any, window: int = 1024
                             ) -> tuple[Any, Any]:
    """:func:`hard_nucleus` from unsorted logits: a ``topk`` window, and a full sort only for the
    rows whose nucleus is wider than the window."""
    probs = torch.softmax(logits / temperature.unsqueeze(-1), dim=-1)
    label_logit = logits.gather(-1, labels.unsqueeze(-1))
    mass_before_label = (probs * (logits > label_logit)).sum(dim=-1)
    inside = mass_before_label < top_p
    inside = inside | (mass_before_label == 0)  # the most likely token is always kept
    window = min(window, logits.shape[-1])
    top = probs.topk(window, dim=-1).values
    keep = (top.cumsum(dim=-1) - top) < top_p.unsqueeze(-1)
    keep[:, 0] = True
    size = keep.sum(dim=-1)
    wide = keep[:, -1] & (window < logits.shape[-1])
    if bool(wide.any()):
        full = probs[wide].sort(dim=-1, descending=True).values
        keep_full = (full.cumsum(dim=-1) - full) < top_p[wide].unsqueeze(-1)
        keep_full[:, 0] = True
        size = size.clone()
        size[wide] = keep_full.sum(dim=-1)
    return inside, size


def hard_nucleus(sorted_logits: Any, label_rank: Any, temperature: Any, top_p: Any) -> tuple[Any, Any]:
    """(label inside the hard nucleus [B] bool, nucleus size [B]) with the sampler's rule:
    a token is kept while the mass before it is below P; the most likely token always is."""
    probs = torch.softmax(sorted_logits / temperature.unsqueeze(-1), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    keep = mass_before < top_p.unsqueeze(-1)
    keep[:, 0] = True
    size = keep.sum(dim=-1)
    return label_rank < size, size


@dataclass
class LossOutput:
    total: Any
    temperature_loss: Any
    top_p_loss: Any
    temperature: Any  # [B] predicted (ones when the head is not trained)
    top_p: Any  # [B] predicted (ones when the head is not trained)
    kept_tokens: int


def autodeco_loss(
    heads: Any,
    hidden: Any,
    logits: Any,
    labels: Any,
    config: LossConfig,
    *,
    generator: Any = None,
    training: bool = True,
) -> LossOutput:
    """Loss of ``heads`` on one batch of cached tokens (``hidden`` [B,H], raw ``logits`` [B,V], ``labels`` [B]).

    ``training=False`` turns easy-token dropping off (validation must be deterministic).
    """
    with torch.no_grad():
        logits = logits.float()
        label_logit = logits.gather(-1, labels.unsqueeze(-1))
        if config.weight_by_label_probability:
            weight = torch.exp(label_logit.squeeze(-1) - torch.logsumexp(logits, dim=-1))
        else:
            weight = torch.ones_like(labels, dtype=torch.float32)
        kept = torch.ones_like(weight)
        if training and config.easy_token_drop > 0:
            easy = logits.argmax(dim=-1) == labels
            draw = torch.rand(labels.shape, generator=generator)
            kept = (~(easy & (draw < config.easy_token_drop))).float()
    denominator = kept.sum().clamp(min=1.0)
    scale = weight * kept
    zero = logits.new_zeros(())
    if config.trains_temperature:
        temperature = heads.temp_head(hidden, logits)
        log_probs = torch.log_softmax(logits / temperature.unsqueeze(-1), dim=-1)
        temperature_loss = (-(log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)) * scale).sum() / denominator
    else:
        temperature = torch.ones_like(weight)
        temperature_loss = zero
    if config.trains_top_p:
        t_for_top_p = temperature if config.top_p_grad_to_temperature else temperature.detach()
        top_p = heads.top_p_head(hidden, logits, t_for_top_p)
        label_prob = soft_top_p_label_probability_windowed(logits, labels, t_for_top_p, top_p,
                                                           config.top_p_steepness, config.soft_top_p_window)
        top_p_loss = (-torch.log(label_prob + SOFT_TOP_P_EPS) * scale).sum() / denominator
    else:
        top_p = torch.ones_like(weight)
        top_p_loss = zero
    return LossOutput(temperature_loss + top_p_loss, temperature_loss, top_p_loss, temperature, top_p,
                      int(kept.sum()))
