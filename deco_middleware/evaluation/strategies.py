"""Decoding strategies the harness compares, and the concrete decoding each one runs.

A *strategy* is what the user names (``oracle``, ``mean-static``, ...). A :class:`Decoding` is one
concrete way to generate (``static T=0.7 P=0.9``); ``oracle`` runs a grid of them and
``mean-static`` one whose values come from an ``autodeco`` run. Results are cached per decoding,
so ``default`` and the oracle's ``T=1.0, P=1.0`` point are generated once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..baselines import BASELINES, parse_baseline
from ..cli.strategies import parse_strategy
from .errors import UnknownStrategyError

# llama.cpp-style "dynamic temperature" comes in two flavours; we implement EDT's formula
# (Zhang et al. 2024, "EDT: Improving LLMs' generation by entropy-based dynamic temperature
# sampling"): T = T0 * N ** (theta / H), H the entropy (nats) of softmax(logits). These defaults
# are the paper's N = 0.8 with T0 = 1 and theta = 1, *not* tuned on our tasks.
EDT_DEFAULTS = {"base_temperature": 1.0, "exponent_base": 0.8, "theta": 1.0}

STRATEGY_HELP = {
    "greedy": "argmax decoding (one sample per problem: every sample would be identical)",
    "default": "sampling at T=1, P=1",
    "static:T,P": "sampling at a fixed temperature T and top-p P",
    "oracle": "static grid tuned on the test set itself: T 0.1..1.5 (step 0.1) at P=1, then P 0.5..1.0 (step 0.05)",
    "mean-static": "static T, P = the mean of the heads' own predictions in the autodeco run on that task",
    "edt[:T0,N,theta]": "entropy-based dynamic temperature T = T0 * N^(theta/H), P=1 (default 1.0,0.8,1.0)",
    "min-p:X[,T]": "min-p filtering at temperature T (default 1), P=1",
    "autodeco": "both learned heads",
    "autodeco@S": "both learned heads with temperature_scale=S (autodeco@1 is autodeco)",
    "autodeco-t": "learned temperature head only, P=1",
    "autodeco-p": "learned top-p head only, T=1",
    **{f"{name}:{','.join(family.arguments)}": family.help for name, family in BASELINES.items()},
    "dev-static": "static (T, P) tuned on the dev split of the training tasks: T first at P=1, then P",
    "dev:FAMILY": "a baseline family (confidence, entropy-adaptive, entropy-continuous, edt, top-n-sigma, p-less, "
    "min-p) with its parameters tuned on the dev split; `tuned-baselines` names all of them and dev-static",
}
STRATEGY_NAMES = tuple(STRATEGY_HELP)

# The sweep of issue #12: greedy, static T at P=1, and the heads at several temperature scales.
SWEEP_TEMPERATURES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
SWEEP_SCALES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
SWEEP_STRATEGIES = (
    "greedy",
    *(f"static:{t:g},1" for t in SWEEP_TEMPERATURES),
    *(f"autodeco@{s:g}" for s in SWEEP_SCALES),
)
# Families tuned on the dev split (see evaluation/tuning.py), and the meta name that expands to all.
TUNED_FAMILIES = ("confidence", "entropy-adaptive", "entropy-continuous", "edt", "top-n-sigma", "p-less", "min-p")
TUNED_BASELINES = ("dev-static", *(f"dev:{family}" for family in TUNED_FAMILIES))

ORACLE_TEMPERATURES = tuple(round(0.1 * i, 2) for i in range(1, 16))
ORACLE_TOP_PS = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))


@dataclass(frozen=True)
class Decoding:
    """One concrete decoding. ``kind`` is greedy | static | edt | learned | baseline."""

    kind: str
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float | None = None
    edt: tuple[float, float, float] | None = None  # (T0, N, theta)
    use_temperature_head: bool = True
    use_top_p_head: bool = True
    temperature_scale: float = 1.0  # learned only: T_final = T_pred * scale
    baseline: str | None = None  # kind "baseline": the canonical name of a deco_middleware.baselines predictor

    @property
    def key(self) -> str:
        """A canonical name, used as the cache key: equal decodings share results."""
        if self.kind == "greedy":
            return "greedy"
        if self.kind == "static":
            base = f"static:T={self.temperature:g},P={self.top_p:g}"
            return base + (f",min_p={self.min_p:g}" if self.min_p else "")
        if self.kind == "edt":
            t0, n, theta = self.edt or (0, 0, 0)
            return f"edt:T0={t0:g},N={n:g},theta={theta:g}"
        if self.kind == "baseline":
            return str(self.baseline)
        heads = {(True, True): "autodeco", (True, False): "autodeco-t", (False, True): "autodeco-p"}
        name = heads[(self.use_temperature_head, self.use_top_p_head)]
        return name if self.temperature_scale == 1.0 else f"{name}@{self.temperature_scale:g}"

    @property
    def learned(self) -> bool:
        return self.kind == "learned"


@dataclass(frozen=True)
class EvalStrategy:
    """A strategy as named by the user. ``decoding`` is set for the ones that need no search."""

    name: str
    decoding: Decoding | None = None

    @property
    def needs_heads(self) -> bool:
        # dev:edt takes its T0 from the heads' mean temperature on the dev split.
        return self.name in ("mean-static", "dev:edt") or (self.decoding is not None and self.decoding.learned)

    @property
    def tuned(self) -> bool:
        """Tuned on the dev split of the training tasks before it runs on the test tasks."""
        return self.name == "dev-static" or self.name.startswith("dev:")


def _numbers(name: str, text: str, count: int, example: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UnknownStrategyError(f"Strategy {name!r}: write {example}.")
    return values


def parse_eval_strategy(text: str) -> EvalStrategy:
    """Parse a strategy name; unknown names fail listing the valid ones."""
    name = text.strip()
    if name == "greedy":
        return EvalStrategy(name, Decoding("greedy", temperature=0.0))
    if name == "default":
        return EvalStrategy(name, Decoding("static", 1.0, 1.0))
    if name.startswith("static:"):
        try:
            parsed = parse_strategy(name)  # one parser for `deco generate` and `deco eval`
        except ValueError as error:
            raise UnknownStrategyError(str(error)) from None
        return EvalStrategy(name, Decoding("static", float(parsed.temperature), float(parsed.top_p)))
    if name in ("oracle", "mean-static", "dev-static"):
        return EvalStrategy(name)
    if name.startswith("dev:"):
        if name[len("dev:") :] not in TUNED_FAMILIES:
            raise UnknownStrategyError(f"Strategy {name!r}: tuned families are {', '.join(TUNED_FAMILIES)}.")
        return EvalStrategy(name)
    if name == "edt" or name.startswith("edt:"):
        values = (
            [EDT_DEFAULTS["base_temperature"], EDT_DEFAULTS["exponent_base"], EDT_DEFAULTS["theta"]]
            if name == "edt"
            else _numbers(name, name[len("edt:") :], 3, "edt or edt:T0,N,theta, e.g. edt:1.0,0.8,1.0")
        )
        t0, n, theta = values
        if not (t0 > 0 and 0 < n < 1 and theta > 0):
            raise UnknownStrategyError(f"Strategy {name!r}: need T0 > 0, 0 < N < 1 and theta > 0.")
        return EvalStrategy(name, Decoding("edt", edt=(t0, n, theta)))
    if name.startswith("min-p:"):
        body = name[len("min-p:") :]
        count = 2 if "," in body else 1
        values = _numbers(name, body, count, "min-p:X or min-p:X,T with X in (0, 1], e.g. min-p:0.1")
        min_p, temperature = values[0], (values[1] if count == 2 else 1.0)
        if not 0 < min_p <= 1 or not temperature > 0:
            raise UnknownStrategyError(f"Strategy {name!r}: X must be in (0, 1] and T > 0, e.g. min-p:0.1,0.7.")
        return EvalStrategy(name, Decoding("static", temperature, 1.0, min_p=min_p))
    if name == "autodeco":
        return EvalStrategy(name, Decoding("learned"))
    if name.startswith("autodeco@") or name.startswith("scale:"):
        body = name.split("@", 1)[1] if name.startswith("autodeco@") else name[len("scale:") :]
        (scale,) = _numbers(name, body, 1, "autodeco@S with a temperature scale S > 0, e.g. autodeco@0.5")
        if not scale > 0:
            raise UnknownStrategyError(f"Strategy {name!r}: S must be > 0 (use `greedy` for S = 0).")
        return EvalStrategy(name, Decoding("learned", temperature_scale=scale))
    if name == "autodeco-t":
        return EvalStrategy(name, Decoding("learned", use_top_p_head=False))
    if name == "autodeco-p":
        return EvalStrategy(name, Decoding("learned", use_temperature_head=False))
    try:
        baseline = parse_baseline(name)
    except ValueError as error:
        raise UnknownStrategyError(str(error)) from None
    if baseline is not None:
        return EvalStrategy(name, Decoding("baseline", baseline=baseline.key))
    raise UnknownStrategyError(f"Unknown strategy {name!r}; valid: {', '.join(STRATEGY_NAMES)}.")


def expand_strategy_names(names: list[str], *, sweep: bool = False) -> list[str]:
    """The names as given, ``tuned-baselines`` expanded, then the sweep's (duplicates dropped, order kept)."""
    out: list[str] = []
    for name in [*names, *(SWEEP_STRATEGIES if sweep else ())]:
        for item in (TUNED_BASELINES if name.strip() == "tuned-baselines" else (name.strip(),)):
            if item not in out:
                out.append(item)
    return out


__all__ = [
    "EDT_DEFAULTS",
    "ORACLE_TEMPERATURES",
    "ORACLE_TOP_PS",
    "STRATEGY_HELP",
    "STRATEGY_NAMES",
    "SWEEP_SCALES",
    "SWEEP_STRATEGIES",
    "SWEEP_TEMPERATURES",
    "TUNED_BASELINES",
    "TUNED_FAMILIES",
    "Decoding",
    "EvalStrategy",
    "expand_strategy_names",
    "parse_eval_strategy",
]
