"""Decoding strategies the harness compares: the library vocabulary plus the eval-only meta strategies.

A *strategy* is what the user names. Every name of :mod:`deco_middleware.strategies` (``greedy``,
``static:T,P``, ``edt``, ``autodeco``, and any a baseline registered) is one concrete
:class:`Decoding`; the harness adds two meta strategies that search first: ``oracle`` runs a grid
of static decodings on the test set itself and ``mean-static`` one whose values come from an
``autodeco`` run. Results are cached per decoding (:attr:`Decoding.key`), so ``default`` and the
oracle's ``T=1.0, P=1.0`` point are generated once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..strategies import Strategy, parse_strategy, strategy_help
from .errors import UnknownStrategyError

# One concrete decoding of the harness is one strategy of the library vocabulary.
Decoding = Strategy

META_STRATEGY_HELP = {
    "oracle": "static grid tuned on the test set itself: T 0.1..1.5 (step 0.1) at P=1, then P 0.5..1.0 (step 0.05)",
    "mean-static": "static T, P = the mean of the heads' own predictions in the autodeco run on that task",
    "mean-static@S": "the same from the autodeco@S run (the heads' mean at temperature scale S)",
    "dev-static": "static (T, P) tuned on the dev split of the training tasks: T first at P=1, then P",
    "dev:FAMILY": "a baseline family (confidence, entropy-adaptive, entropy-continuous, edt, top-n-sigma, p-less, "
    "min-p) with its parameters tuned on the dev split; `tuned-baselines` names all of them and dev-static",
}


def eval_strategy_help() -> dict[str, str]:
    """Every name ``deco eval`` accepts (the library's, registered baselines included, and the meta ones),
    baselines first as the harness has always listed them."""
    library = strategy_help()
    first = {name: library[name] for name in ("greedy", "default", "static:T,P") if name in library}
    return {**first, **META_STRATEGY_HELP, **library}


STRATEGY_HELP = eval_strategy_help()
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


def static_decoding(temperature: float, top_p: float) -> Decoding:
    """A static decoding found by a search (``oracle``, ``mean-static``)."""
    return Strategy(f"static:{temperature},{top_p}", "static", float(temperature), float(top_p))


@dataclass(frozen=True)
class EvalStrategy:
    """A strategy as named by the user. ``decoding`` is set for the ones that need no search."""

    name: str
    decoding: Decoding | None = None

    @property
    def needs_heads(self) -> bool:
        # dev:edt takes its T0 from the heads' mean temperature on the dev split.
        return (self.name == "dev:edt" or self.mean_static_scale is not None
                or (self.decoding is not None and self.decoding.learned))

    @property
    def mean_static_scale(self) -> float | None:
        """S of ``mean-static@S`` (1 for ``mean-static``); ``None`` for every other strategy."""
        if self.name == "mean-static":
            return 1.0
        if self.name.startswith("mean-static@"):
            return float(self.name.split("@", 1)[1])
        return None

    @property
    def tuned(self) -> bool:
        """Tuned on the dev split of the training tasks before it runs on the test tasks."""
        return self.name == "dev-static" or self.name.startswith("dev:")


def parse_eval_strategy(text: str) -> EvalStrategy:
    """Parse a strategy name; unknown names fail listing the valid ones."""
    name = text.strip()
    if name in ("oracle", "mean-static", "dev-static"):
        return EvalStrategy(name)
    if name.startswith("mean-static@"):
        scale = name.split("@", 1)[1]
        try:
            parse_strategy(f"autodeco@{scale}")  # the same rules for S as autodeco@S
        except UnknownStrategyError as error:
            raise UnknownStrategyError(f"Strategy {name!r}: {error}") from None
        return EvalStrategy(f"mean-static@{float(scale):g}")
    if name.startswith("dev:"):
        if name[len("dev:") :] not in TUNED_FAMILIES:
            raise UnknownStrategyError(f"Strategy {name!r}: tuned families are {', '.join(TUNED_FAMILIES)}.")
        return EvalStrategy(name)
    try:
        return EvalStrategy(name, parse_strategy(name))
    except UnknownStrategyError as error:
        if str(error).startswith("Unknown strategy"):
            raise UnknownStrategyError(
                f"Unknown strategy {name!r}; valid: {', '.join(eval_strategy_help())}."
            ) from None
        raise


def expand_strategy_names(names: list[str], *, sweep: bool = False) -> list[str]:
    """The names as given, ``tuned-baselines`` expanded, then the sweep's (duplicates dropped, order kept)."""
    out: list[str] = []
    for name in [*names, *(SWEEP_STRATEGIES if sweep else ())]:
        for item in (TUNED_BASELINES if name.strip() == "tuned-baselines" else (name.strip(),)):
            if item not in out:
                out.append(item)
    return out


__all__ = [
    "META_STRATEGY_HELP",
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
    "eval_strategy_help",
    "expand_strategy_names",
    "parse_eval_strategy",
    "static_decoding",
]
