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

from ..strategies import EDT_DEFAULTS, Strategy, parse_strategy, strategy_help
from .errors import UnknownStrategyError

# One concrete decoding of the harness is one strategy of the library vocabulary.
Decoding = Strategy

META_STRATEGY_HELP = {
    "oracle": "static grid tuned on the test set itself: T 0.1..1.5 (step 0.1) at P=1, then P 0.5..1.0 (step 0.05)",
    "mean-static": "static T, P = the mean of the heads' own predictions in the autodeco run on that task",
}


def eval_strategy_help() -> dict[str, str]:
    """Every name ``deco eval`` accepts (the library's, registered baselines included, and the meta ones),
    baselines first as the harness has always listed them."""
    library = strategy_help()
    first = {name: library[name] for name in ("greedy", "default", "static:T,P") if name in library}
    return {**first, **META_STRATEGY_HELP, **library}


STRATEGY_HELP = eval_strategy_help()
STRATEGY_NAMES = tuple(STRATEGY_HELP)

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
        return self.name == "mean-static" or (self.decoding is not None and self.decoding.learned)


def parse_eval_strategy(text: str) -> EvalStrategy:
    """Parse a strategy name; unknown names fail listing the valid ones."""
    name = text.strip()
    if name in META_STRATEGY_HELP:
        return EvalStrategy(name)
    try:
        return EvalStrategy(name, parse_strategy(name))
    except UnknownStrategyError as error:
        if str(error).startswith("Unknown strategy"):
            raise UnknownStrategyError(
                f"Unknown strategy {name!r}; valid: {', '.join(eval_strategy_help())}."
            ) from None
        raise


__all__ = [
    "EDT_DEFAULTS",
    "META_STRATEGY_HELP",
    "ORACLE_TEMPERATURES",
    "ORACLE_TOP_PS",
    "STRATEGY_HELP",
    "STRATEGY_NAMES",
    "Decoding",
    "EvalStrategy",
    "eval_strategy_help",
    "parse_eval_strategy",
    "static_decoding",
]
