"""Outcome-driven training of the heads: off-policy policy gradient on graded rollouts, plus steering.

The LM is frozen, so the feature cache gives the exact raw logits ``l = h @ W^T`` of every token
of every sampled trajectory. The log-probability of a trajectory under *any* head policy
``(T_t, P_t)`` is therefore computable without generating again (:func:`trajectory_log_prob`),
and so is its log-probability under the behaviour policy it was drawn from (a static
temperature ``T_b`` at P = 1: ``log softmax(l / T_b)[y]``, exact; for on-policy draws of the heads
the sampler's own per-token ``(T_t, P_t)``, :func:`record_behaviour`).

Objective ``"ppo"`` (per prompt group of rollouts, :mod:`.rollouts`):

- reward ``r`` = 1 for a correct reply, else 0; with ``rare_bonus = b`` a correct reply to a prompt
  the draws solve with share ``s`` earns ``1 + b * (1 - s)`` (pass@k counts the rarely solved);
- advantage ``A = (r - mean_group) / (std_group + 1e-6)`` over the group's draws (duplicates
  counted with their ``count``); groups whose draws are all right or all wrong carry no signal
  and are skipped;
- per token ``rho = pi_heads(y | T_t, P_t) / pi_b(y)``; PPO's clipped surrogate
  ``min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)``, averaged over a trajectory's tokens, then
  over trajectories (weighted by ``count``). The heads' probability uses the soft nucleus of the
  reference loss (:mod:`.loss`) when the top-p head is trained, else ``softmax(l / T)``;
- ``reference_weight`` adds the AutoDeco loss on the correct draws (the reference recipe as an
  anchor; ``objective="reference"`` is that loss alone, i.e. rejection sampling).

Steering (issue #13): records of the same completion under a "low" and a "high" instruction
(``steer`` in ``record_info``, ``pair`` = the index of the neutral record) add the margin ranking
loss ``relu(m - (mean T_neutral - mean T_low)) + relu(m - (mean T_high - mean T_neutral))`` on the
per-sequence mean temperature (and with ``steer_margin_top_p > 0`` the same on P); neutral
records keep the usual objective, so accuracy is held by it. Copies under a sentence that asks
nothing of the decoding (``steer="neutral"``) add the hold term :func:`hold_loss`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from .._deps import require
from ..progress import ProgressBar, ProgressCallback
from ..manifest import TEMPERATURE_FEATURES
from .cache import FeatureCache
from .data import TrainingDataError
from .loss import LossConfig, autodeco_loss, soft_top_p_label_probability_windowed

torch = require("torch", purpose="Training heads")

Objective = Literal["ppo", "reference"]
OBJECTIVES = ("ppo", "reference")


@dataclass(frozen=True)
class OutcomeConfig:
    """Hyperparameters of :func:`fit_outcome` (module docstring)."""

    objective: Objective = "ppo"
    learning_rate: float = 1e-3
    epochs: int = 4
    groups_per_step: int = 4
    clip: float = 0.2
    # Dual clip (Ye et al. 2020): a negative-advantage token's loss is capped at dual_clip * |A|. Off
    # policy, rho = pi_heads / pi_b is unbounded (a rare token drawn at T_b = 0.3 that the heads give
    # 100x the mass), and without the cap a few such tokens dominate the loss (measured: 7.9e8 at the
    # first step on real rollouts). 0 turns it off.
    dual_clip: float = 3.0
    rare_bonus: float = 0.0
    reference_weight: float = 0.0
    train_top_p: bool = True
    top_p_steepness: float = 30.0
    soft_top_p_window: int = 1024
    steer_weight: float = 1.0
    steer_margin: float = 0.25
    steer_margin_top_p: float = 0.0
    # Hold term: on a copy of a completion under a neutral sentence (steering.NEUTRAL_PHRASINGS), the
    # mean T must stay within `steer_hold_tolerance` of the plain prompt's: relu(|dT| - tol), this weight.
    steer_hold_weight: float = 1.0
    steer_hold_tolerance: float = 0.02
    pairs_per_step: int = 4
    validation_fraction: float = 0.1
    seed: int = 0
    inner_size: int = 256
    max_steps: int | None = None
    # Every `validate_every` steps, the validation PPO loss (held-out prompt groups); with `keep_best`
    # the heads of the lowest one (the untrained start included) are the result: early stopping on
    # the objective itself, never on an evaluation set.
    validate_every: int | None = None
    keep_best: bool = False
    temperature_features: str = "hidden"  # or "hidden+logit-stats" (manifest `heads.temperature_features`)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {self.objective!r}.")
        if not self.learning_rate > 0 or self.epochs < 1 or self.groups_per_step < 1 or self.pairs_per_step < 1:
            raise ValueError("`learning_rate` must be > 0 and `epochs`, `groups_per_step`, `pairs_per_step` >= 1.")
        if not 0 < self.clip < 1:
            raise ValueError(f"`clip` has to be in (0, 1), got {self.clip!r} (PPO's usual 0.2).")
        if self.dual_clip != 0 and not self.dual_clip > 1:
            raise ValueError(f"`dual_clip` has to be > 1 (usually 3) or 0 (off), got {self.dual_clip!r}.")
        if self.steer_margin < 0 or self.steer_margin_top_p < 0:
            raise ValueError("Steering margins have to be >= 0.")
        if self.validate_every is not None and self.validate_every < 1:
            raise ValueError(f"`validate_every` has to be a positive number of steps, got {self.validate_every!r}.")
        if self.keep_best and self.validate_every is None:
            raise ValueError("`keep_best` picks among validation checkpoints: set `validate_every` too (e.g. 10).")
        if self.steer_hold_weight < 0 or self.steer_hold_tolerance < 0:
            raise ValueError("`steer_hold_weight` and `steer_hold_tolerance` have to be >= 0.")
        if self.temperature_features not in TEMPERATURE_FEATURES:
            raise ValueError(f"`temperature_features` must be one of {', '.join(TEMPERATURE_FEATURES)}, "
                             f"got {self.temperature_features!r}.")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pieces with tests of their own ------------------------------------------------------------------


def behaviour_log_prob(logits: Any, labels: Any, temperature: Any) -> Any:
    """``log softmax(l / T_b)[y]`` per token: the exact log-probability under a static T_b, P = 1."""
    scaled = logits.float() / temperature.float().unsqueeze(-1)
    return scaled.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


def trajectory_log_prob(logits: Any, labels: Any, temperature: Any, top_p: Any) -> Any:
    """Per-token log-probability of ``labels`` under the sampler's rule at ``(T_t, P_t)``: divide by T,
    keep a token while the mass before it is below P (the most likely always), renormalise.
    ``-inf`` where the label falls outside the nucleus. Sum over a trajectory's tokens for its
    log-probability."""
    probs = torch.softmax(logits.float() / temperature.float().unsqueeze(-1), dim=-1)
    label_prob = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    label_logit = logits.gather(-1, labels.unsqueeze(-1))
    before = (probs * (logits > label_logit)).sum(dim=-1)
    inside = (before < top_p) | (before == 0)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p.unsqueeze(-1)
    keep[:, 0] = True
    kept_mass = (sorted_probs * keep).sum(dim=-1)
    out = torch.log(label_prob) - torch.log(kept_mass)
    return torch.where(inside, out, torch.full_like(out, -math.inf))


def record_behaviour(info: dict[str, Any], length: int) -> tuple[np.ndarray, np.ndarray]:
    """The behaviour ``(T_t, P_t)`` of one rollout's ``length`` tokens: its per-token values (on-policy
    draws) or its static ``temperature`` at P = 1."""
    temperatures, top_ps = info.get("temperatures"), info.get("top_ps")
    if temperatures is None:
        return np.full(length, float(info["temperature"]), dtype=np.float32), np.ones(length, dtype=np.float32)
    if len(temperatures) != length or len(top_ps or ()) != length:
        raise TrainingDataError(
            f"A rollout of group {info.get('group')!r} has {len(temperatures)} per-token temperatures and "
            f"{len(top_ps or ())} top-p values for {length} cached tokens; rebuild the cache from the rollouts file.")
    return np.asarray(temperatures, dtype=np.float32), np.asarray(top_ps, dtype=np.float32)


def behaviour_token_log_prob(logits: Any, labels: Any, temperature: Any, top_p: Any) -> Any:
    """``log pi_b(y)`` per token at the behaviour's ``(T_t, P_t)``: exact at P = 1, the sampler's nucleus
    otherwise (:func:`trajectory_log_prob`); a drawn label that falls just outside the nucleus in float
    rounding gets its P = 1 value instead of ``-inf``."""
    plain = behaviour_log_prob(logits, labels, temperature)
    truncated = top_p < 1.0
    if not bool(truncated.any()):
        return plain
    nucleus = trajectory_log_prob(logits[truncated], labels[truncated], temperature[truncated], top_p[truncated])
    out = plain.clone()
    out[truncated] = torch.where(torch.isfinite(nucleus), nucleus, plain[truncated])
    return out


def group_advantages(rewards: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(r - mean) / (std + 1e-6)`` over one group's draws (``counts`` repeats merged duplicates)."""
    weights = counts / counts.sum()
    mean = float((weights * rewards).sum())
    std = math.sqrt(float((weights * (rewards - mean) ** 2).sum()))
    return (rewards - mean) / (std + 1e-6)


def shaped_rewards(correct: np.ndarray, counts: np.ndarray, rare_bonus: float) -> np.ndarray:
    """1 / 0 per draw; with ``rare_bonus`` a correct draw earns ``1 + b * (1 - share solved)``."""
    share = float((counts * correct).sum() / counts.sum())
    return correct * (1.0 + rare_bonus * (1.0 - share))


def ppo_surrogate(log_prob: Any, old_log_prob: Any, advantage: Any, clip: float, dual_clip: float = 0.0) -> Any:
    """Per-token clipped surrogate *loss* ``-min(rho A, clip(rho) A)`` (minimise it).

    With ``dual_clip = c > 1``, where ``A < 0`` the surrogate is floored at ``c * A`` (dual-clip PPO):
    the loss of one token is at most ``c * |A|`` and carries no gradient beyond it.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip)
    surrogate = torch.minimum(ratio * advantage, clipped * advantage)
    if dual_clip:
        surrogate = torch.where(advantage < 0, torch.maximum(surrogate, dual_clip * advantage), surrogate)
    return -surrogate


def ranking_loss(lower: Any, higher: Any, margin: float) -> Any:
    """``relu(margin - (higher - lower))``, mean: zero (and zero gradient) once ``higher`` leads by ``margin``."""
    return torch.relu(margin - (higher - lower)).mean()


# -- the fit -----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    token_slices: list[np.ndarray]  # per record: its cache token indices, in order
    train_groups: list[list[int]]
    val_groups: list[list[int]]
    solved_train_groups: list[list[int]]  # groups with at least one correct draw (the reference recipe's data)
    train_pairs: list[tuple[int, int, int]]  # (neutral, low, high) record indices
    val_pairs: list[tuple[int, int, int]]
    info: list[dict[str, Any]]
    train_holds: list[tuple[int, int]] = field(default_factory=list)  # (plain, neutral-sentence copy)
    val_holds: list[tuple[int, int]] = field(default_factory=list)


def plan_outcome_data(cache: FeatureCache, validation_fraction: float, seed: int) -> _Plan:
    """Groups of neutral rollouts with mixed outcomes, steering triplets, split by prompt group."""
    info = cache.meta.get("record_info")
    if not info:
        raise TrainingDataError(
            f"The cache at {cache.directory} has no per-record rewards (record_info): build it from rollouts "
            "(`deco train rollouts`), or use the reference objective.")
    sequence = np.asarray(cache.sequence)
    order = np.argsort(sequence, kind="stable")
    bounds = np.searchsorted(sequence[order], np.arange(len(info) + 1))
    token_slices = [order[bounds[i]:bounds[i + 1]] for i in range(len(info))]
    groups: dict[str, list[int]] = {}
    pairs: dict[int, dict[str, int]] = {}
    for index, record in enumerate(info):
        if len(token_slices[index]) == 0:
            continue
        if record.get("steer") in ("low", "high", "neutral"):
            pairs.setdefault(int(record["pair"]), {})[record["steer"]] = index
        elif record.get("reward") is not None:
            groups.setdefault(str(record["group"]), []).append(index)
    names = sorted(groups)
    rng = np.random.default_rng(seed)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    n_val = int(round(len(names) * validation_fraction))
    val_names = set(shuffled[:n_val])
    mixed = lambda members: len({info[m]["reward"] for m in members}) > 1  # noqa: E731
    train_groups = [groups[n] for n in names if n not in val_names and mixed(groups[n])]
    val_groups = [groups[n] for n in names if n in val_names and mixed(groups[n])]
    solved = [groups[n] for n in names if n not in val_names and any(info[m]["reward"] > 0 for m in groups[n])]
    group_of = {m: str(info[m]["group"]) for n in names for m in groups[n]}
    triplets = [(neutral, p["low"], p["high"]) for neutral, p in sorted(pairs.items()) if "low" in p and "high" in p
                and len(token_slices[neutral])]
    train_pairs = [t for t in triplets if group_of.get(t[0]) not in val_names]
    val_pairs = [t for t in triplets if group_of.get(t[0]) in val_names]
    holds = [(plain, p["neutral"]) for plain, p in sorted(pairs.items()) if "neutral" in p and len(token_slices[plain])]
    return _Plan(token_slices, train_groups, val_groups, solved, train_pairs, val_pairs, info,
                 [h for h in holds if group_of.get(h[0]) not in val_names], [h for h in holds if group_of.get(h[0]) in val_names])


def _tokens(cache: FeatureCache, indices: np.ndarray) -> tuple[Any, Any, Any]:
    hidden = torch.from_numpy(np.asarray(cache.hidden[indices], dtype=np.float32))
    labels = torch.from_numpy(np.asarray(cache.labels[indices], dtype=np.int64))
    return hidden, cache.logits(hidden), labels


def _head_log_prob(heads: Any, hidden: Any, logits: Any, labels: Any, config: OutcomeConfig) -> tuple[Any, Any, Any]:
    temperature = heads.temp_head(hidden, logits)
    if config.train_top_p:
        top_p = heads.top_p_head(hidden, logits, temperature)
        prob = soft_top_p_label_probability_windowed(logits, labels, temperature, top_p, config.top_p_steepness,
                                                     config.soft_top_p_window)
        return torch.log(prob + 1e-9), temperature, top_p
    log_prob = behaviour_log_prob(logits, labels, temperature)
    return log_prob, temperature, torch.ones_like(temperature)


def group_loss(heads: Any, cache: FeatureCache, plan: _Plan, groups: list[list[int]], config: OutcomeConfig
               ) -> tuple[Any, dict[str, float]]:
    """The PPO loss (plus the reference anchor) over ``groups`` of rollouts."""
    members = [m for g in groups for m in g]
    indices = np.concatenate([plan.token_slices[m] for m in members])
    owner = np.concatenate([np.full(len(plan.token_slices[m]), k) for k, m in enumerate(members)])
    hidden, logits, labels = _tokens(cache, indices)
    counts = np.array([float(plan.info[m].get("count") or 1) for m in members])
    rewards = np.array([float(plan.info[m]["reward"]) for m in members])
    advantages = np.zeros(len(members))
    start = 0
    for g in groups:
        end = start + len(g)
        shaped = shaped_rewards(rewards[start:end], counts[start:end], config.rare_bonus)
        advantages[start:end] = group_advantages(shaped, counts[start:end])
        start = end
    owner_t = torch.from_numpy(owner)
    behaviour = [record_behaviour(plan.info[m], len(plan.token_slices[m])) for m in members]
    behaviour_t = torch.from_numpy(np.concatenate([b[0] for b in behaviour]))
    behaviour_p = torch.from_numpy(np.concatenate([b[1] for b in behaviour]))
    with torch.no_grad():
        old = behaviour_token_log_prob(logits, labels, behaviour_t, behaviour_p)
    log_prob, temperature, top_p = _head_log_prob(heads, hidden, logits, labels, config)
    per_token = ppo_surrogate(log_prob, old, torch.from_numpy(advantages).float()[owner_t], config.clip,
                              config.dual_clip)
    lengths = torch.bincount(owner_t, minlength=len(members)).float()
    per_record = torch.zeros(len(members)).index_add(0, owner_t, per_token) / lengths.clamp(min=1)
    weights = torch.from_numpy(counts).float()
    ppo = (per_record * weights).sum() / weights.sum()
    stats = {"ppo": float(ppo.detach()), "T": float(temperature.detach().mean()), "P": float(top_p.detach().mean())}
    # objective "reference": the AutoDeco loss on the correct draws alone (rejection sampling), the
    # PPO value kept as a diagnostic only.
    loss = ppo if config.objective == "ppo" else ppo.detach()
    reference_weight = 1.0 if config.objective == "reference" else config.reference_weight
    if reference_weight > 0:
        correct = torch.from_numpy(rewards > 0)[owner_t]
        if bool(correct.any()):
            ref = autodeco_loss(heads, hidden[correct], logits[correct], labels[correct],
                                LossConfig(heads="both" if config.train_top_p else "temperature"), training=False)
            loss = loss + reference_weight * ref.total
            stats["reference"] = float(ref.total.detach())
    return loss, stats


def _sequence_means(heads: Any, cache: FeatureCache, plan: _Plan, members: list[int], *, top_p: bool = False
                    ) -> tuple[Any, Any]:
    """Per record of ``members``: the heads' mean T over its tokens (and mean P with ``top_p``, else None)."""
    indices = np.concatenate([plan.token_slices[m] for m in members])
    owner = torch.from_numpy(np.concatenate([np.full(len(plan.token_slices[m]), k) for k, m in enumerate(members)]))
    hidden = torch.from_numpy(np.asarray(cache.hidden[indices], dtype=np.float32))
    lengths = torch.bincount(owner, minlength=len(members)).float().clamp(min=1)
    logits = cache.logits(hidden) if top_p or heads.temperature_features != "hidden" else None
    temperature = heads.temp_head(hidden, logits)

    def mean(values: Any) -> Any:
        return torch.zeros(len(members)).index_add(0, owner, values) / lengths

    return mean(temperature), mean(heads.top_p_head(hidden, logits, temperature)) if top_p else None


def steer_loss(heads: Any, cache: FeatureCache, plan: _Plan, triplets: list[tuple[int, int, int]],
               config: OutcomeConfig) -> tuple[Any, dict[str, float]]:
    """Margin ranking loss on the per-sequence mean T (and P) of (neutral, low, high) triplets."""
    wants_top_p = config.steer_margin_top_p > 0 and config.train_top_p
    mean_t, mean_p = _sequence_means(heads, cache, plan, [m for t in triplets for m in t], top_p=wants_top_p)
    mean_t = mean_t.view(-1, 3)
    loss = ranking_loss(mean_t[:, 1], mean_t[:, 0], config.steer_margin) + \
        ranking_loss(mean_t[:, 0], mean_t[:, 2], config.steer_margin)
    shift = (mean_t - mean_t[:, :1]).detach()
    stats = {"dT_low": float(shift[:, 1].mean()), "dT_high": float(shift[:, 2].mean()),
             "steer_consistency": float(((shift[:, 1] < 0) & (shift[:, 2] > 0)).float().mean())}
    if wants_top_p:
        mean_p = mean_p.view(-1, 3)
        loss = loss + ranking_loss(mean_p[:, 1], mean_p[:, 0], config.steer_margin_top_p)
        stats["dP_low"] = float((mean_p[:, 1] - mean_p[:, 0]).detach().mean())
    return loss, stats


def hold_loss(heads: Any, cache: FeatureCache, plan: _Plan, holds: list[tuple[int, int]], config: OutcomeConfig
              ) -> tuple[Any, dict[str, float]]:
    """``relu(|mean T_copy - mean T_plain| - tolerance)``, mean over (plain, neutral-sentence copy) pairs of one
    completion: a sentence that asks nothing of the decoding should not move the temperature."""
    mean_t, _ = _sequence_means(heads, cache, plan, [m for h in holds for m in h])
    mean_t = mean_t.view(-1, 2)
    shift = mean_t[:, 1] - mean_t[:, 0]
    loss = torch.relu(shift.abs() - config.steer_hold_tolerance).mean()
    return loss, {"dT_neutral": float(shift.detach().mean()), "dT_neutral_abs": float(shift.detach().abs().mean())}


@dataclass
class OutcomeFit:
    heads: Any
    steps: int
    history: list[dict[str, Any]]
    validation_before: dict[str, float]
    validation: dict[str, float]
    wall_seconds: float
    train_groups: int
    train_pairs: int
    train_tokens: int
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # step, validation (validate_every)
    best_step: int | None = None  # keep_best: the step whose heads were kept (0 = the untrained start)


@torch.no_grad()
def validate(heads: Any, cache: FeatureCache, plan: _Plan, config: OutcomeConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    if plan.val_groups:
        total, temps = 0.0, []
        for start in range(0, len(plan.val_groups), config.groups_per_step):
            chunk = plan.val_groups[start:start + config.groups_per_step]
            loss, stats = group_loss(heads, cache, plan, chunk, config)
            total += float(loss) * len(chunk)
            temps.append(stats["T"])
        out["ppo_loss"] = round(total / len(plan.val_groups), 5)
        out["temperature_mean"] = round(float(np.mean(temps)), 4)
    if plan.val_pairs:
        _, stats = steer_loss(heads, cache, plan, plan.val_pairs, config)
        out.update({k: round(v, 4) for k, v in stats.items()})
    if plan.val_holds:
        _, stats = hold_loss(heads, cache, plan, plan.val_holds, config)
        out.update({k: round(v, 4) for k, v in stats.items()})
    return out


def _take(order: list[int], count: int, size: int, rng: np.random.Generator) -> list[int]:
    """The next ``size`` indices of ``order`` (consumed), refilled with a permutation of ``range(count)`` when short."""
    if len(order) < size:
        order += list(rng.permutation(count))
    chosen = order[:size]
    del order[:size]
    return chosen


def fit_outcome(cache: FeatureCache, config: OutcomeConfig, *, on_log: Callable[[dict[str, Any]], None] | None = None,
                progress: bool | ProgressCallback | None = None) -> OutcomeFit:
    """Train fresh heads on ``cache`` with the outcome objective (and steering when the cache has pairs).

    Seeded: the initial weights, the group order of each epoch and the pair order are drawn from
    ``config.seed``, so the same seed and cache give the same heads."""
    from ..heads.modules import AutoDecoHeads

    plan = plan_outcome_data(cache, config.validation_fraction, config.seed)
    if config.objective == "reference":
        plan.train_groups = plan.solved_train_groups
    if not plan.train_groups and not plan.train_pairs:
        raise TrainingDataError(
            f"The cache at {cache.directory} has no prompt group with both right and wrong draws and no steering "
            "pairs: nothing for the outcome objective to learn from. Sample more, or at more temperatures.")
    if config.keep_best and not plan.val_groups:
        raise TrainingDataError(
            f"`keep_best` needs validation prompt groups with mixed outcomes, and the cache at {cache.directory} "
            f"leaves none at validation_fraction={config.validation_fraction}: raise it, or drop keep_best.")
    steps_per_epoch = max(math.ceil(len(plan.train_groups) / config.groups_per_step),
                          math.ceil(len(plan.train_pairs) / config.pairs_per_step), 1)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    torch.manual_seed(config.seed)
    heads = AutoDecoHeads(cache.hidden.shape[1], inner_size=config.inner_size,
                          temperature_features=config.temperature_features)
    parameters = list(heads.temp_head.parameters()) + (list(heads.top_p_head.parameters()) if config.train_top_p else [])
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    validation_before = validate(heads, cache, plan, config)
    checkpoints: list[dict[str, Any]] = [{"step": 0, **validation_before}] if config.validate_every else []
    # keep_best: (validation PPO loss, step, weights) of the best checkpoint so far, the start included
    best = (validation_before["ppo_loss"], 0, copy.deepcopy(heads.state_dict())) if config.keep_best else None
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed + 1)
    group_order: list[int] = []
    pair_order: list[int] = []
    hold_order: list[int] = []
    rng_hold = np.random.default_rng(config.seed + 2)  # its own stream: runs without holds draw as before
    trained_tokens = 0
    bar = ProgressBar("outcome training", total_steps, progress=progress)
    for step in range(total_steps):
        heads.train()
        loss = torch.zeros(())
        record: dict[str, Any] = {"step": step + 1}
        if plan.train_groups:
            chosen = [plan.train_groups[i] for i in _take(group_order, len(plan.train_groups), config.groups_per_step, rng)]
            part, stats = group_loss(heads, cache, plan, chosen, config)
            loss = loss + part
            record.update({k: round(v, 5) for k, v in stats.items()})
            trained_tokens += sum(len(plan.token_slices[m]) for g in chosen for m in g)
        if plan.train_pairs and config.steer_weight > 0:
            chosen_pairs = [plan.train_pairs[i] for i in _take(pair_order, len(plan.train_pairs), config.pairs_per_step, rng)]
            part, stats = steer_loss(heads, cache, plan, chosen_pairs, config)
            loss = loss + config.steer_weight * part
            record.update({k: round(v, 4) for k, v in stats.items()})
        if plan.train_holds and config.steer_hold_weight > 0:
            chosen_holds = [plan.train_holds[i] for i in _take(hold_order, len(plan.train_holds), config.pairs_per_step,
                                                               rng_hold)]
            part, stats = hold_loss(heads, cache, plan, chosen_holds, config)
            loss = loss + config.steer_hold_weight * part
            record.update({k: round(v, 4) for k, v in stats.items()})
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
        record["loss"] = round(float(loss.detach()), 5)
        history.append(record)
        bar.update(completed=step + 1, info=f"loss {record['loss']:.4f}" + (f" T {record['T']:.3f}" if "T" in record else ""))
        if on_log is not None:
            on_log(record)
        if config.validate_every and ((step + 1) % config.validate_every == 0 or step + 1 == total_steps):
            heads.eval()
            checkpoint = {"step": step + 1, **validate(heads, cache, plan, config)}
            checkpoints.append(checkpoint)
            if best is not None and checkpoint["ppo_loss"] < best[0]:
                best = (checkpoint["ppo_loss"], step + 1, copy.deepcopy(heads.state_dict()))
    heads.eval()
    if best is not None:
        heads.load_state_dict(best[2])
    wall = time.perf_counter() - started
    return OutcomeFit(heads, total_steps, history, validation_before, validate(heads, cache, plan, config),
                      round(wall, 2), len(plan.train_groups), len(plan.train_pairs), trained_tokens, checkpoints,
                      None if best is None else best[1])


def export_outcome_heads(result: OutcomeFit, cache: FeatureCache, config: OutcomeConfig, directory: Any, *,
                         command: Any = None, stages: dict[str, Any] | None = None, recipe: str | None = None,
                         extra: dict[str, Any] | None = None) -> Any:
    """Write ``heads.onnx`` + manifest (reference architecture) with the outcome fit's training record."""
    from ..heads.artifact import export_heads
    from ..manifest import HeadArchitecture

    trained = ["temperature", "top_p"] if config.train_top_p else ["temperature"]
    meta = cache.meta
    data_summary = meta.get("data_summary") or {}
    record = {
        "method": "AutoDeco heads on a frozen LM, trained on the model's own graded rollouts with an off-policy "
                  "clipped policy gradient (training/outcome.py)"
                  + ("; steering ranking loss on instruction pairs" if result.train_pairs else ""),
        "recipe": recipe,
        "data": {**data_summary,
                 "cache": {k: meta.get(k) for k in ("records", "records_used", "completion_tokens", "hidden_dtype",
                                                    "verify")},
                 "train_groups": result.train_groups, "train_pairs": result.train_pairs,
                 "trained_tokens": result.train_tokens},
        "hyperparameters": {**config.as_dict(), "optimizer": "AdamW"},
        "validation_before_training": result.validation_before,
        "validation": result.validation,
        "final_train_loss": result.history[-1]["loss"] if result.history else None,
        "validation_checkpoints": result.checkpoints,
        "best_step": result.best_step,
        "stages": {"cache": {"wall_seconds": meta.get("wall_seconds"), "tokens_per_second": meta.get("tokens_per_second")},
                   "fit": {"wall_seconds": result.wall_seconds, "steps": result.steps,
                           "tokens_per_second": round(result.train_tokens / result.wall_seconds, 1)
                           if result.wall_seconds else None},
                   **(stages or {})},
        "command": command,
        **(extra or {}),
    }
    architecture = HeadArchitecture(temperature_hidden_size=config.inner_size, top_p_hidden_size=config.inner_size,
                                    trained=trained, temperature_features=config.temperature_features)
    description = (f"AutoDeco heads for {cache.base_model.name}, trained on graded rollouts (objective "
                   f"{config.objective}{', with steering' if result.train_pairs else ''}).")
    return export_heads(result.heads.numpy_weights(), directory, base_model=cache.base_model,
                        architecture=architecture, description=description, training=record)
