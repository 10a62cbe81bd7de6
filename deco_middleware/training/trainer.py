"""Fit the heads on a feature cache: AdamW, seeded, validated, checkpointed and resumable.

Every random draw is derived from the seed and the step number (the token order of each epoch,
the easy-token mask of each step), so a run resumed from a checkpoint takes exactly the same
steps as one that was never interrupted.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._deps import require
from ..manifest import TEMPERATURE_FEATURES, atomic_write_bytes
from ..progress import ProgressBar, ProgressCallback
from .cache import FeatureCache
from ..errors import TrainingDataError, TrainingInterrupted
from .loss import LossConfig, autodeco_loss, hard_nucleus_from_logits

torch = require("torch", purpose="Training heads")

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Args:
    learning_rate: AdamW step size (reference 5e-6 on 7B+ models; a 135M model needs far more).
    batch_tokens: completion tokens per step (tokens are shuffled across records).
    epochs: passes over the training tokens; ``max_steps`` caps the total when set.
    validation_fraction: share of *records* held out (split by record so no sequence leaks).
    checkpoint_every: steps between checkpoints (one is also written at the end and on Ctrl-C).
    sources: train and validate only on records of these sources (``sample``, ``reference``,
        ``sample-wrong``, ``user``); ``None`` uses every cached record.
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_tokens: int = 128
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 0
    validation_fraction: float = 0.1
    validation_max_tokens: int = 4096
    checkpoint_every: int = 50
    inner_size: int = 256
    temperature_features: str = "hidden"  # or "hidden+logit-stats" (manifest `heads.temperature_features`)
    sources: tuple[str, ...] | None = None
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` has to be > 0, got {self.learning_rate!r}.")
        if self.batch_tokens < 1 or self.epochs < 1:
            raise ValueError(f"`batch_tokens` and `epochs` have to be >= 1, got {self.batch_tokens}, {self.epochs}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"`validation_fraction` has to be in [0, 1), got {self.validation_fraction!r}.")
        if self.temperature_features not in TEMPERATURE_FEATURES:
            raise ValueError(f"`temperature_features` must be one of {', '.join(TEMPERATURE_FEATURES)}, "
                             f"got {self.temperature_features!r}.")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loss"] = self.loss.as_dict()
        return out



def select_records(cache: FeatureCache, sources: tuple[str, ...] | None) -> np.ndarray:
    """Record indices (as in ``cache.sequence``) whose source is in ``sources`` (all when ``None``)."""
    sequence = np.asarray(cache.sequence)
    records = np.unique(sequence)
    if sources is None:
        return records
    known = cache.meta.get("record_sources")
    if known is None:
        raise TrainingDataError(f"The cache at {cache.directory} records no sources (built by an older version); "
                                "rebuild it with `deco train cache` to use --sources.")
    wanted = set(sources)
    chosen = records[np.isin(np.asarray(known, dtype=object)[records], list(wanted))]
    if len(chosen) == 0:
        present = sorted(set(known))
        raise TrainingDataError(f"No cached record has a source in {sorted(wanted)}; this cache holds {present}.")
    return chosen


def split_tokens(cache: FeatureCache, fraction: float, seed: int,
                 sources: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token indices of the training and validation parts, split by record."""
    sequence = np.asarray(cache.sequence)
    records = select_records(cache, sources)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(records)
    n_val = int(round(len(records) * fraction)) if fraction > 0 and len(records) > 1 else 0
    n_val = min(max(n_val, 1 if fraction > 0 and len(records) > 1 else 0), len(records) - 1)
    val_records = np.sort(shuffled[:n_val])
    is_val = np.isin(sequence, val_records)
    is_train = np.isin(sequence, records) & ~is_val
    return np.flatnonzero(is_train), np.flatnonzero(is_val)


def _batch(cache: FeatureCache, indices: np.ndarray) -> tuple[Any, Any, Any]:
    indices = np.sort(indices)  # sequential reads from the memory map
    hidden = torch.from_numpy(np.asarray(cache.hidden[indices], dtype=np.float32))
    labels = torch.from_numpy(np.asarray(cache.labels[indices], dtype=np.int64))
    return hidden, cache.logits(hidden), labels


@torch.no_grad()
def evaluate(heads: Any, cache: FeatureCache, indices: np.ndarray, config: TrainConfig) -> dict[str, float]:
    """Validation metrics: losses (no token dropping), mean/std of T and P, share of label tokens
    inside the hard nucleus, mean nucleus size."""
    if len(indices) == 0:
        return {}
    indices = indices[: config.validation_max_tokens]
    sums = {"loss": 0.0, "temperature_loss": 0.0, "top_p_loss": 0.0}
    temperatures, top_ps, inside, sizes = [], [], [], []
    for start in range(0, len(indices), config.batch_tokens):
        part = indices[start : start + config.batch_tokens]
        hidden, logits, labels = _batch(cache, part)
        out = autodeco_loss(heads, hidden, logits, labels, config.loss, training=False)
        for key, value in (("loss", out.total), ("temperature_loss", out.temperature_loss),
                           ("top_p_loss", out.top_p_loss)):
            sums[key] += float(value) * len(part)
        label_inside, size = hard_nucleus_from_logits(logits.float(), labels, out.temperature, out.top_p)
        temperatures.append(out.temperature)
        top_ps.append(out.top_p)
        inside.append(label_inside.float())
        sizes.append(size.float())
    t, p = torch.cat(temperatures), torch.cat(top_ps)
    n = len(indices)
    return {
        **{key: round(value / n, 5) for key, value in sums.items()},
        "temperature_mean": round(float(t.mean()), 4),
        "temperature_std": round(float(t.std()) if n > 1 else 0.0, 4),
        "top_p_mean": round(float(p.mean()), 4),
        "top_p_std": round(float(p.std()) if n > 1 else 0.0, 4),
        "label_in_nucleus": round(float(torch.cat(inside).mean()), 4),
        "nucleus_size_mean": round(float(torch.cat(sizes).mean()), 2),
        "tokens": n,
    }


@dataclass
class FitResult:
    heads: Any
    steps: int
    history: list[dict[str, Any]]
    validation_before: dict[str, float]
    validation: dict[str, float]
    wall_seconds: float
    tokens_per_second: float
    train_tokens: int
    validation_tokens: int


def _save_checkpoint(path: Path, heads: Any, optimizer: Any, step: int, config: TrainConfig,
                     history: list[dict[str, Any]], validation_before: dict[str, float]) -> None:
    buffer = io.BytesIO()
    torch.save({"step": step, "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                "config": config.as_dict(), "history": history, "validation_before": validation_before}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


_CHECKPOINT_KEYS = ("config", "heads", "optimizer", "step", "history", "validation_before")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """The saved training state, or a clear error: an empty file raises EOFError (which the CLI
    reported as just "Aborted."), a corrupt one an unpickling or zip error."""
    fix = "Delete it, or pass `--no-resume`, to start over."
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises EOFError, RuntimeError, UnpicklingError, zip errors, ...
        raise TrainingDataError(f"The checkpoint {path} is unreadable ({type(error).__name__}: {error}). {fix}") from None
    missing = [key for key in _CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise TrainingDataError(f"The checkpoint {path} lacks {', '.join(missing)}: it was not written by `deco train fit`. {fix}")
    return state


def fit(
    cache: FeatureCache,
    config: TrainConfig,
    *,
    work_dir: str | Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool | ProgressCallback = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train heads on ``cache``. With ``work_dir`` a checkpoint is kept there and, with ``resume``,
    picked up again. ``stop_after`` ends the run after that many steps (for tests of resuming)."""
    from ..heads.modules import AutoDecoHeads

    train_idx, val_idx = split_tokens(cache, config.validation_fraction, config.seed, config.sources)
    if len(train_idx) == 0:
        raise TrainingDataError(
            f"The cache at {cache.directory} leaves no training tokens after holding out {config.validation_fraction:.0%} "
            "for validation. Add data or lower --validation-fraction."
        )
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_tokens)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    torch.manual_seed(config.seed)
    heads = AutoDecoHeads(cache.hidden.shape[1], inner_size=config.inner_size,
                          temperature_features=config.temperature_features)
    parameters = [p for name, p in heads.named_parameters()
                  if (name.startswith("temp_head") and config.loss.trains_temperature)
                  or (name.startswith("top_p_head") and config.loss.trains_top_p)]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    step, history = 0, []
    validation_before: dict[str, float] = {}
    checkpoint = Path(work_dir) / CHECKPOINT_NAME if work_dir is not None else None
    if checkpoint is not None and resume and checkpoint.is_file():
        state = _load_checkpoint(checkpoint)
        saved = {"temperature_features": "hidden", **state["config"]}  # checkpoints from before the option
        if saved != config.as_dict():
            raise ValueError(
                f"The checkpoint {checkpoint} was written with different settings; pass the same settings to resume, "
                "or `--no-resume` (or delete the checkpoint) to start over."
            )
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, validation_before = state["step"], state["history"], state["validation_before"]
    if not validation_before:
        validation_before = evaluate(heads, cache, val_idx, config)

    started = time.perf_counter()
    trained_tokens = 0
    try:
        with ProgressBar("training", total_steps, step, progress=progress) as bar:
            permutation_epoch, permutation = -1, None
            while step < total_steps:
                epoch, offset = divmod(step, steps_per_epoch)
                if epoch != permutation_epoch:
                    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
                    permutation = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
                    permutation_epoch = epoch
                part = permutation[offset * config.batch_tokens : (offset + 1) * config.batch_tokens]
                hidden, logits, labels = _batch(cache, part)
                mask_generator = torch.Generator().manual_seed(config.seed * 7_919 + step + 1)
                heads.train()
                out = autodeco_loss(heads, hidden, logits, labels, config.loss, generator=mask_generator)
                optimizer.zero_grad(set_to_none=True)
                if out.total.requires_grad:
                    out.total.backward()
                    optimizer.step()
                step += 1
                trained_tokens += len(part)
                record = {"step": step, "loss": round(float(out.total.detach()), 5),
                          "temperature_mean": round(float(out.temperature.detach().mean()), 4),
                          "top_p_mean": round(float(out.top_p.detach().mean()), 4)}
                history.append(record)
                if on_log is not None:
                    on_log(record)
                bar.update(advance=1, info=f"loss {record['loss']:.4f} T {record['temperature_mean']:.3f} "
                                               f"P {record['top_p_mean']:.3f}")
                if checkpoint is not None and (step % config.checkpoint_every == 0 or step == total_steps):
                    _save_checkpoint(checkpoint, heads, optimizer, step, config, history, validation_before)
                if stop_after is not None and step >= stop_after and step < total_steps:
                    if checkpoint is not None:
                        _save_checkpoint(checkpoint, heads, optimizer, step, config, history, validation_before)
                    raise TrainingInterrupted(f"Stopped after step {step} of {total_steps} (checkpoint saved).")
    except KeyboardInterrupt:
        if checkpoint is not None:
            _save_checkpoint(checkpoint, heads, optimizer, step, config, history, validation_before)
        raise
    wall = time.perf_counter() - started
    heads.eval()
    validation = evaluate(heads, cache, val_idx, config)
    return FitResult(heads, step, history, validation_before, validation, round(wall, 2),
                     round(trained_tokens / wall, 1) if wall > 0 else 0.0, len(train_idx), len(val_idx))
