"""The one strategy vocabulary: what ``greedy``, ``static:T,P``, ``autodeco`` ... mean, everywhere.

``deco generate``, ``deco trace``, ``deco eval``, ``deco bench`` and every backend parse a strategy
name with :func:`parse_strategy` and decode with :meth:`Strategy.predictor`, so one name is one
decoding on every path (the Hugging Face pair, the batched engine, the ONNX Runtime loop).

Names:

- ``greedy``: argmax (T = 0).
- ``default``: sampling at T = 1, P = 1.
- ``static:T,P``: a fixed temperature T > 0 and top-p P in (0, 1].
- ``edt[:T0,N,theta]``: entropy-based dynamic temperature ``T = T0 * N ** (theta / H)``, P = 1.
- ``min-p:X[,T]``: min-p filtering at temperature T (default 1), P = 1.
- the baselines of :mod:`deco_middleware.baselines`: ``confidence:TAU,T_HIGH``,
  ``entropy-adaptive:THRESHOLD,T_LOW,T_HIGH``, ``entropy-continuous:T_MIN,T_MAX``,
  ``top-n-sigma:N,T``, ``p-less:T`` (a bare family name takes its defaults).
- ``autodeco``: both learned heads; ``autodeco-t`` / ``autodeco-p``: only the temperature / top-p head.
- ``autodeco@S`` (also written ``scale:S``): both heads with ``temperature_scale = S`` (0 is greedy).
- ``autodeco-t+p-less``: the temperature head (P = 1) plus the exact p-less filter at its T, the rule
  ``deco train top-p`` distils into the top-p head (decoding-step filter: the engines with the full step).

New strategies (baselines) add their names with :func:`register_strategy`. The evaluation harness
adds meta strategies (``oracle``, ``mean-static``) on top, in :mod:`deco_middleware.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .baselines import BASELINES, PLess, WithFilters, parse_baseline
from .errors import UnknownStrategyError
from .sampling import (
    GREEDY,
    DecodingSettings,
    EntropyTemperaturePredictor,
    LearnedPredictor,
    MinP,
    Predictor,
    StaticPredictor,
)


# EDT's formula is Zhang et al. 2024 ("EDT: Improving LLMs' generation by entropy-based dynamic
# temperature sampling"); these defaults are the paper's N = 0.8 with T0 = 1 and theta = 1, *not*
# tuned on our tasks.
EDT_DEFAULTS = {"base_temperature": 1.0, "exponent_base": 0.8, "theta": 1.0}


@dataclass(frozen=True)
class Strategy:
    """One named decoding. ``kind`` is greedy | static | edt | learned, or a registered kind.

    ``name`` is the canonical text (``static:0.7,0.9``); ``key`` the name results are cached under
    (equal decodings share one key: ``default`` and ``static:1,1``).
    """

    name: str = field(compare=False)  # equal decodings are equal whatever they were called
    kind: str
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float | None = None
    edt: tuple[float, float, float] | None = None  # (T0, N, theta)
    use_temperature_head: bool = True
    use_top_p_head: bool = True
    temperature_scale: float = 1.0
    # Registered strategies: builds the predictor from (heads or None).
    build: Callable[[Any], Predictor] | None = field(default=None, compare=False, repr=False)
    needs_heads_flag: bool = field(default=False, compare=False, repr=False)

    @property
    def learned(self) -> bool:
        """Whether the strategy runs the trained heads."""
        return self.kind == "learned" or self.needs_heads_flag

    @property
    def needs_heads(self) -> bool:
        return self.learned

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
        if self.kind == "learned":
            heads = {(True, True): "autodeco", (True, False): "autodeco-t", (False, True): "autodeco-p"}
            base = heads[(self.use_temperature_head, self.use_top_p_head)]
            return base if self.temperature_scale == 1.0 else f"{base}@{self.temperature_scale:g}"
        return self.name

    def settings(self, **overrides: Any) -> DecodingSettings:
        """The :class:`DecodingSettings` of a learned strategy (``overrides`` on top)."""
        values: dict[str, Any] = {
            "use_temperature_head": self.use_temperature_head,
            "use_top_p_head": self.use_top_p_head,
            "temperature_scale": self.temperature_scale,
        }
        return DecodingSettings(**{**values, **overrides})

    def settings_for_the_learned_pair(self, *, temperature_scale: float = 1.0, top_p_scale: float = 1.0) -> dict[str, Any]:
        """This decoding as settings of the learned pair (heads off where the strategy has none).

        Static strategies switch both heads off, so T and P are the scales; for ``deco trace``, which
        records every run through the pair. EDT and registered strategies have no such form.
        """
        if self.kind == "learned":
            scale = self.temperature_scale * temperature_scale
            return {"temperature_scale": scale, "top_p_scale": top_p_scale,
                    **({} if self.use_temperature_head else {"use_temperature_head": False}),
                    **({} if self.use_top_p_head else {"use_top_p_head": False})}
        if self.kind == "greedy":
            return {"temperature_scale": 0.0}
        if self.kind == "static":
            return {
                "use_temperature_head": False, "use_top_p_head": False,
                "temperature_scale": self.temperature, "top_p_scale": self.top_p,
                **({"min_p": self.min_p} if self.min_p else {}),
            }
        raise UnknownStrategyError(f"Strategy {self.name!r} has no form as settings of the learned pair.")

    def predictor(self, heads: Any = None, **settings_overrides: Any) -> Predictor:
        """The decoding as a :class:`~deco_middleware.sampling.Predictor` (``heads`` for learned ones).

        ``settings_overrides`` (e.g. ``top_p_scale``, ``fallback_temperature``) apply to learned
        strategies only.
        """
        if self.build is not None:
            return self.build(heads)
        if self.kind == "greedy":
            return StaticPredictor(GREEDY)
        if self.kind == "static":
            return StaticPredictor(self.temperature, self.top_p, (MinP(self.min_p),) if self.min_p else ())
        if self.kind == "edt":
            t0, n, theta = self.edt or tuple(EDT_DEFAULTS.values())
            return EntropyTemperaturePredictor(t0, n, theta)
        if self.kind == "learned":
            if heads is None:
                raise UnknownStrategyError(f"Strategy {self.name!r} runs the learned heads: pass `heads`.")
            settings = self.settings(**settings_overrides)
            return LearnedPredictor(heads, settings.for_trained_heads(getattr(heads, "trained_heads", ("temperature", "top_p"))))
        raise UnknownStrategyError(f"Strategy {self.name!r} of kind {self.kind!r} has no predictor.")


Parser = Callable[[str, "str | None"], Strategy]


@dataclass(frozen=True)
class _Entry:
    name: str  # as listed in help and errors: "static:T,P"
    help: str
    parse: Parser  # (full text, argument after the prefix or None) -> Strategy


_REGISTRY: dict[str, _Entry] = {}  # by prefix ("static", "edt", "autodeco-t", ...)


def register_strategy(prefix: str, parse: Parser, *, shown_as: str | None = None, help: str = "") -> None:
    """Add a strategy name to the vocabulary (e.g. from ``deco_middleware.baselines``).

    ``parse(text, argument)`` gets the whole text and the part after ``prefix:`` (``None`` when the
    name has no argument) and returns a :class:`Strategy`; use ``Strategy(name, kind, build=...)``
    for a new kind of predictor. Registering an existing prefix replaces it.
    """
    if not prefix or ":" in prefix or "@" in prefix:
        raise ValueError(f"A strategy prefix is a plain name without ':' or '@', got {prefix!r}.")
    _REGISTRY[prefix] = _Entry(shown_as or prefix, help, parse)


def strategy_names() -> tuple[str, ...]:
    """Every name in the vocabulary, as written in help texts and errors."""
    return tuple(entry.name for entry in _REGISTRY.values())


def strategy_help() -> dict[str, str]:
    return {entry.name: entry.help for entry in _REGISTRY.values()}


def _numbers(text: str, argument: str, count: int, example: str) -> list[float]:
    try:
        values = [float(x) for x in argument.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise UnknownStrategyError(f"Strategy {text!r}: write {example}.")
    return values


def _no_argument(text: str, argument: str | None) -> None:
    if argument is not None:
        raise UnknownStrategyError(f"Strategy {text!r} takes no parameters; write {text.split(':', 1)[0]}.")


def _greedy(text: str, argument: str | None) -> Strategy:
    _no_argument(text, argument)
    return Strategy("greedy", "greedy", temperature=0.0)


def _default(text: str, argument: str | None) -> Strategy:
    _no_argument(text, argument)
    return Strategy("default", "static", 1.0, 1.0)


def _static(text: str, argument: str | None) -> Strategy:
    if argument is None:
        raise UnknownStrategyError(f"Strategy {text!r}: write static:T,P with two numbers, e.g. static:0.7,0.9.")
    try:
        temperature, top_p = (float(x) for x in argument.split(","))
    except ValueError:
        raise UnknownStrategyError(f"Strategy {text!r}: write static:T,P with two numbers, e.g. static:0.7,0.9.") from None
    if not (0 < temperature < math.inf) or not 0 < top_p <= 1:
        raise UnknownStrategyError(
            f"Strategy {text!r}: T must be > 0 and finite and P in (0, 1]; use `greedy` for T = 0."
        )
    return Strategy(f"static:{temperature},{top_p}", "static", temperature, top_p)


def _edt(text: str, argument: str | None) -> Strategy:
    if argument is None:
        values = list(EDT_DEFAULTS.values())
    else:
        values = _numbers(text, argument, 3, "edt or edt:T0,N,theta, e.g. edt:1.0,0.8,1.0")
    t0, n, theta = values
    if not (t0 > 0 and 0 < n < 1 and theta > 0):
        raise UnknownStrategyError(f"Strategy {text!r}: need T0 > 0, 0 < N < 1 and theta > 0.")
    name = "edt" if argument is None else f"edt:{t0:g},{n:g},{theta:g}"
    return Strategy(name, "edt", edt=(t0, n, theta))


def _min_p(text: str, argument: str | None) -> Strategy:
    body = argument or ""
    count = 2 if "," in body else 1
    values = _numbers(text, body, count, "min-p:X or min-p:X,T with X in (0, 1], e.g. min-p:0.1 or min-p:0.1,0.7")
    min_p, temperature = values[0], (values[1] if count == 2 else 1.0)
    if not 0 < min_p <= 1 or not 0 < temperature < math.inf:
        raise UnknownStrategyError(f"Strategy {text!r}: X must be in (0, 1] and T > 0, e.g. min-p:0.1,0.7.")
    name = f"min-p:{min_p:g}" if count == 1 else f"min-p:{min_p:g},{temperature:g}"
    return Strategy(name, "static", temperature, 1.0, min_p=min_p)


def _baseline(text: str, argument: str | None) -> Strategy:
    try:
        spec = parse_baseline(text)  # validates the parameters with the family's own messages
    except UnknownStrategyError:
        raise
    except ValueError as error:
        raise UnknownStrategyError(str(error)) from None
    if spec is None:  # pragma: no cover - only registered for the families parse_baseline knows
        raise UnknownStrategyError(f"Unknown strategy {text!r}; valid: {', '.join(strategy_names())}.")
    return Strategy(spec.key, "baseline", build=lambda heads: spec.predictor())


def _learned(temperature_head: bool, top_p_head: bool) -> Parser:
    def parse(text: str, argument: str | None) -> Strategy:
        _no_argument(text, argument)
        base = text.split("@", 1)[0]
        return Strategy(base, "learned", use_temperature_head=temperature_head, use_top_p_head=top_p_head)

    return parse


def _learned_p_less(text: str, argument: str | None) -> Strategy:
    _no_argument(text, argument)

    def build(heads: Any) -> Predictor:  # autodeco-t's own predictor, the filter appended
        return WithFilters(_learned(True, False)("autodeco-t", None).predictor(heads), (PLess(),))

    return Strategy("autodeco-t+p-less", "learned+filter", build=build, needs_heads_flag=True)


def _scale(text: str, argument: str | None) -> Strategy:
    try:
        scale = float(argument) if argument is not None else math.nan
    except ValueError:
        scale = math.nan
    if math.isnan(scale):
        raise UnknownStrategyError(f"Strategy {text!r}: write scale:X with a number (or autodeco@X), e.g. scale:0.5.")
    if not 0 <= scale < math.inf:
        raise UnknownStrategyError(f"Strategy {text!r}: the temperature scale must be >= 0 and finite (0 is greedy).")
    return Strategy(f"autodeco@{scale:g}", "learned", temperature_scale=scale)


# The first three are the names `deco generate` has always listed first.
register_strategy("autodeco", _learned(True, True), help="both learned heads")
register_strategy("greedy", _greedy, help="argmax decoding (one sample per problem: every sample would be identical)")
register_strategy("static", _static, shown_as="static:T,P", help="sampling at a fixed temperature T and top-p P")
register_strategy("default", _default, help="sampling at T=1, P=1")
register_strategy("edt", _edt, shown_as="edt[:T0,N,theta]",
                  help="entropy-based dynamic temperature T = T0 * N^(theta/H), P=1 (default 1.0,0.8,1.0)")
register_strategy("min-p", _min_p, shown_as="min-p:X[,T]", help="min-p filtering at temperature T (default 1), P=1")
register_strategy("autodeco-t", _learned(True, False), help="learned temperature head only, P=1")
register_strategy("autodeco-p", _learned(False, True), help="learned top-p head only, T=1")
register_strategy("autodeco-t+p-less", _learned_p_less,
                  help="learned temperature head, P=1, then the exact p-less filter at its T (what `deco train top-p` distils)")
register_strategy("scale", _scale, shown_as="autodeco@S | scale:S",
                  help="both learned heads with the temperature scaled by S (0 is greedy)")
for _family, _entry in BASELINES.items():
    register_strategy(_family, _baseline, shown_as=f"{_family}:{','.join(_entry.arguments)}", help=_entry.help)


def parse_strategy(text: str) -> Strategy:
    """Parse a strategy name; unknown names fail listing the valid ones."""
    if not isinstance(text, str):
        raise UnknownStrategyError(f"A strategy is a name such as 'autodeco' or 'static:0.7,0.9', got {text!r}.")
    text = text.strip()
    if text.startswith("autodeco@"):
        return _scale(text, text[len("autodeco@"):])
    prefix, _, argument = text.partition(":")
    entry = _REGISTRY.get(prefix)
    if entry is None:
        raise UnknownStrategyError(f"Unknown strategy {text!r}; valid: {', '.join(strategy_names())}.")
    return entry.parse(text, argument if ":" in text else None)


__all__ = [
    "EDT_DEFAULTS",
    "Strategy",
    "UnknownStrategyError",
    "parse_strategy",
    "register_strategy",
    "strategy_help",
    "strategy_names",
]
