"""A supervised target for the top-p head: the nucleus of a per-token rule, distilled (issue #12).

Trained on outcomes, the top-p head learns P = 1 (docs/training.md): off policy from draws at P = 1,
any truncation makes some token of a correct draw impossible. The best rule on the dev split is a
truncation rule, p-less (arXiv 2509.23234: keep the tokens whose probability is at least
``sum p^2``, the chance that two draws agree). A threshold rule keeps a *prefix* of the tokens
sorted by probability, and the sampler's nucleus (``sampling.nucleus_filter``: a token stays while
the mass before it is below P) keeps exactly the first ``k`` tokens when

    mass of the first k - 1 tokens  <  P  <=  mass of the first k tokens.

So the rule can be written as a per-token P, and a top-p head trained to it runs in every backend
that applies the heads' T and P (HF, ONNX Runtime, vLLM, onnxruntime-genai) with no filter of its
own. The rule is applied where the decoding step applies its filters: to ``softmax(l / T)`` at the
heads' own temperature (``p-less:T`` of the strategy vocabulary is the same rule at a static T).

:func:`fit_top_p_target` trains only the top-p head of existing heads, the temperature head frozen,
on a feature cache (any cache: the target needs no grades). The loss is a Huber loss between
``logit(P)`` and the logit of the interval's midpoint (logits resolve the intervals near P = 1 that
a low temperature makes); the validation metric is the share of held-out tokens whose nucleus is
exactly the rule's set (``agreement``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .._deps import require
from ..progress import ProgressBar, ProgressCallback
from .cache import FeatureCache
from .data import TrainingDataError
from .trainer import FitResult, split_tokens

torch = require("torch", purpose="Training heads")

TopPTarget = Literal["p-less"]
TOP_P_TARGETS = ("p-less",)
_P_EPS = 1e-6  # P targets and predictions are kept in [eps, 1 - eps] before the logit


@dataclass(frozen=True)
class TopPTargetConfig:
    """Hyperparameters of :func:`fit_top_p_target`."""

    target: TopPTarget = "p-less"
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 256
    validation_fraction: float = 0.1
    seed: int = 0
    max_steps: int | None = None
    huber_delta: float = 1.0
    # Folded into the temperature head before the targets are taken (T_applied = T_source * scale), so the
    # nucleus is the rule's at the temperature the shipped heads will apply; 1 keeps the source's T.
    temperature_scale: float = 1.0
    # Loss weight of the tokens where the rule keeps several tokens (2.5-12% of the default model's at
    # T 0.35-0.7): unweighted, a head that keeps only the top token almost everywhere already agrees on
    # ~95% of tokens, and is greedy decoding.
    branch_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.target not in TOP_P_TARGETS:
            raise ValueError(f"`target` must be one of {', '.join(TOP_P_TARGETS)}, got {self.target!r}.")
        if not self.learning_rate > 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("`learning_rate` must be > 0 and `epochs`, `batch_size` >= 1.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"`validation_fraction` has to be in [0, 1), got {self.validation_fraction!r}.")
        if not self.huber_delta > 0:
            raise ValueError(f"`huber_delta` has to be > 0, got {self.huber_delta!r}.")
        if not self.branch_weight > 0:
            raise ValueError(f"`branch_weight` has to be > 0, got {self.branch_weight!r} (1 = every token alike).")
        if not 0 < self.temperature_scale <= 10:
            raise ValueError(f"`temperature_scale` has to be in (0, 10], got {self.temperature_scale!r} (1 keeps the "
                             "source heads' temperature).")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def p_less_interval(logits: Any, temperature: Any) -> tuple[Any, Any, Any]:
    """Per row: ``(low, high, size)`` such that the nucleus with ``low < P <= high`` keeps exactly the
    p-less set of ``softmax(logits / T)`` (its ``size`` most likely tokens; the most likely always).

    No sort: the set is ``{p >= sum p^2}``, so ``high`` is its mass and ``low`` that mass less its least
    likely member. The probabilities are float32 like the sampler's softmax, the masses float64 like its
    cumulative sum. Ties at the threshold count as kept, as in :class:`deco_middleware.baselines.PLess`."""
    probs = torch.softmax(logits.float() / temperature.float().unsqueeze(-1), dim=-1)
    threshold = torch.linalg.vecdot(probs, probs).unsqueeze(-1)
    kept = (probs >= threshold) | (probs == probs.max(dim=-1, keepdim=True).values)
    size = kept.sum(dim=-1)
    high = (probs.double() * kept).sum(dim=-1)
    low = high - torch.where(kept, probs, torch.ones_like(probs)).min(dim=-1).values.double()
    return low, high, size


def _logit(p: Any) -> Any:
    p = p.clamp(_P_EPS, 1 - _P_EPS)
    return torch.log(p) - torch.log1p(-p)


def top_p_target_loss(top_p: Any, low: Any, high: Any, delta: float = 1.0, weight: Any = None) -> Any:
    """Huber loss between ``logit(top_p)`` and the logit of the interval's midpoint, mean over rows
    (weighted by ``weight`` when given)."""
    target = _logit(((low + high) / 2).float())
    per_row = torch.nn.functional.huber_loss(_logit(top_p.float()), target, delta=delta, reduction="none")
    if weight is None:
        return per_row.mean()
    weight = weight.float()
    return (per_row * weight).sum() / weight.sum()


def _row_weights(size: Any, branch_weight: float) -> Any:
    """1 for rows whose rule keeps one token, ``branch_weight`` for rows where it keeps several."""
    return torch.where(size > 1, torch.full(size.shape, float(branch_weight)), torch.ones(size.shape))


def _exact(top_p: Any, low: Any, high: Any) -> Any:
    """Per row: whether the nucleus at ``top_p`` is exactly the rule's set (``low < P <= high``)."""
    p = top_p.double()
    return (p > low) & (p <= high)


def agreement(top_p: Any, low: Any, high: Any) -> Any:
    """Share of rows whose nucleus at ``top_p`` is exactly the rule's set."""
    return _exact(top_p, low, high).double().mean()


@torch.no_grad()
def _targets(heads: Any, cache: FeatureCache, indices: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lows, highs, sizes = [], [], []
    for start in range(0, len(indices), batch):
        hidden = torch.from_numpy(np.asarray(cache.hidden[indices[start:start + batch]], dtype=np.float32))
        logits = cache.logits(hidden)
        low, high, size = p_less_interval(logits, heads.temp_head(hidden, logits))
        lows.append(low.numpy())
        highs.append(high.numpy())
        sizes.append(size.numpy())
    empty = np.zeros(0)
    return (np.concatenate(lows) if lows else empty, np.concatenate(highs) if highs else empty,
            np.concatenate(sizes) if sizes else empty)


@torch.no_grad()
def _validate(heads: Any, cache: FeatureCache, indices: np.ndarray, low: np.ndarray, high: np.ndarray,
              size: np.ndarray, config: TopPTargetConfig) -> dict[str, float]:
    """Loss (unweighted), ``agreement`` over all held-out tokens and ``agreement_branching`` over those where
    the rule keeps more than one token (where the nucleus decides anything), the mean P."""
    if not len(indices):
        return {}
    total, mean_p = 0.0, 0.0
    exact = []
    for start in range(0, len(indices), config.batch_size):
        part = slice(start, start + config.batch_size)
        hidden = torch.from_numpy(np.asarray(cache.hidden[indices[part]], dtype=np.float32))
        logits = cache.logits(hidden)
        top_p = heads.top_p_head(hidden, logits, heads.temp_head(hidden, logits))
        lo, hi = torch.from_numpy(low[part]), torch.from_numpy(high[part])
        n = len(hidden)
        total += float(top_p_target_loss(top_p, lo, hi, config.huber_delta)) * n
        mean_p += float(top_p.sum())
        exact.append(_exact(top_p, lo, hi).numpy())
    n = len(indices)
    branching = size > 1
    every = np.concatenate(exact)
    hits = every[branching]
    return {"loss": round(total / n, 5), "agreement": round(float(every.mean()), 4),
            "agreement_branching": round(float(hits.mean()), 4) if len(hits) else None,
            "branching_share": round(float(branching.mean()), 4), "top_p_mean": round(mean_p / n, 4)}


def fit_top_p_target(heads: Any, cache: FeatureCache, config: TopPTargetConfig, *,
                     progress: bool | ProgressCallback | None = None) -> FitResult:
    """Train the top-p head of ``heads`` (an :class:`~deco_middleware.heads.modules.AutoDecoHeads`, not
    modified: a copy is trained) to the nucleus of ``config.target`` at the heads' own temperature.

    The temperature head is frozen, so the targets are computed once (their time counts in
    ``wall_seconds``). Seeded: the record split and the batch order come from ``config.seed``; the top-p
    head starts from its current weights."""
    if cache.hidden.shape[1] != heads.hidden_size:
        raise TrainingDataError(f"The cache at {cache.directory} has hidden size {cache.hidden.shape[1]}, the heads "
                                f"{heads.hidden_size}: build the cache with the heads' base model.")
    heads = copy.deepcopy(heads).float()
    heads.temp_head.max_temperature *= config.temperature_scale  # T = sigmoid(.) * max_temperature
    for parameter in heads.temp_head.parameters():
        parameter.requires_grad_(False)
    heads.eval()
    train_idx, val_idx = split_tokens(cache, config.validation_fraction, config.seed)
    if not len(train_idx):
        raise TrainingDataError(f"The cache at {cache.directory} leaves no training tokens at validation_fraction="
                                f"{config.validation_fraction}: lower it, or cache more records.")
    started = time.perf_counter()
    train_low, train_high, train_size = _targets(heads, cache, train_idx, config.batch_size)
    val_low, val_high, val_size = _targets(heads, cache, val_idx, config.batch_size)
    validation_before = _validate(heads, cache, val_idx, val_low, val_high, val_size, config)
    validation_before["rule_size_mean"] = round(float(train_size.mean()), 3)
    optimizer = torch.optim.AdamW(heads.top_p_head.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rng = np.random.default_rng(config.seed + 1)
    steps_per_epoch = -(-len(train_idx) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    history: list[dict[str, Any]] = []
    order = np.zeros(0, dtype=np.int64)
    bar = ProgressBar("top-p target", total_steps, progress=progress)
    for step in range(total_steps):
        if len(order) < config.batch_size:
            order = np.concatenate([order, rng.permutation(len(train_idx))])
        chosen, order = np.sort(order[:config.batch_size]), order[config.batch_size:]
        hidden = torch.from_numpy(np.asarray(cache.hidden[train_idx[chosen]], dtype=np.float32))
        logits = cache.logits(hidden)
        with torch.no_grad():
            temperature = heads.temp_head(hidden, logits)
        heads.top_p_head.train()
        top_p = heads.top_p_head(hidden, logits, temperature)
        low, high = torch.from_numpy(train_low[chosen]), torch.from_numpy(train_high[chosen])
        loss = top_p_target_loss(top_p, low, high, config.huber_delta,
                                 _row_weights(torch.from_numpy(train_size[chosen]), config.branch_weight))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {"step": step + 1, "loss": round(float(loss.detach()), 5),
                  "agreement": round(float(agreement(top_p.detach(), low, high)), 4)}
        history.append(record)
        bar.update(completed=step + 1, info=f"loss {record['loss']:.4f} agree {record['agreement']:.2f}")
    heads.eval()
    wall = time.perf_counter() - started
    validation = _validate(heads, cache, val_idx, val_low, val_high, val_size, config)
    tokens = total_steps * config.batch_size
    return FitResult(heads, total_steps, history, validation_before, validation, round(wall, 2),
                     round(tokens / wall, 1) if wall else 0.0, tokens, len(val_idx))


def heads_from_artifact_for_training(path: Any) -> tuple[Any, Any]:
    """``(AutoDecoHeads with trainable weights, DecodingHeads)`` of a heads folder or shipped name."""
    from ..heads.artifact import DecodingHeads
    from ..heads.torch_artifact import torch_heads_from_artifact

    artifact = DecodingHeads.from_pretrained(path)
    architecture = artifact.manifest.heads
    if not architecture.enhanced_features:
        raise ValueError(f"The heads at {path} have enhanced_features=false; the top-p head this stage trains reads "
                         "the enhanced features (METHOD.md). Start from heads with the reference architecture.")
    if "temperature" not in architecture.trained:
        raise ValueError(f"The heads at {path} have no trained temperature head (trained={architecture.trained}); the "
                         "top-p target is taken at the heads' own temperature, so train that first.")
    return torch_heads_from_artifact(artifact, trainable=True), artifact


def export_top_p_target_heads(result: FitResult, artifact: Any, cache: FeatureCache, config: TopPTargetConfig,
                              directory: Any, *, command: Any = None) -> Any:
    """Write the heads with the distilled top-p head: the source heads' architecture and training record,
    ``trained`` gaining ``top_p``, and a ``top_p_target`` section with this stage's record."""
    from ..heads.artifact import export_heads

    source = artifact.manifest
    architecture = source.heads.model_copy(update={
        "trained": sorted({*source.heads.trained, "top_p"}, key=["temperature", "top_p"].index),
        "max_temperature": float(result.heads.temp_head.max_temperature)})
    training = dict(source.training or {})
    stages = dict(training.get("stages") or {})
    stages["top_p_target"] = {"wall_seconds": result.wall_seconds, "steps": result.steps,
                              "tokens_per_second": result.tokens_per_second}
    training["stages"] = stages
    training["top_p_target"] = {
        "method": f"top-p head distilled from the {config.target} nucleus at the heads' own temperature "
                  "(training/nucleus.py); the temperature head is the source heads' own, unchanged",
        "source_heads": str(artifact.directory) if getattr(artifact, "directory", None) else None,
        "source_onnx_sha256": source.onnx.sha256,
        "temperature_scale_folded": config.temperature_scale,
        "cache": {k: cache.meta.get(k) for k in ("records", "records_used", "completion_tokens", "hidden_dtype")},
        "hyperparameters": {**config.as_dict(), "optimizer": "AdamW"},
        "validation_before_training": result.validation_before,
        "validation": result.validation,
        "command": command,
    }
    description = (f"{source.description.rstrip('.')}. Top-p head distilled from the {config.target} nucleus "
                   "at the heads' own temperature.").lstrip(". ")
    return export_heads(result.heads.numpy_weights(), directory, base_model=source.base_model,
                        architecture=architecture, description=description, training=training,
                        evaluation=None, source=source.source)
