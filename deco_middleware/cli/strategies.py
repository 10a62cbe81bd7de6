"""Decoding strategies named on the command line: ``autodeco``, ``greedy``, ``static:T,P``."""

from __future__ import annotations

from dataclasses import dataclass

STRATEGY_NAMES = ("autodeco", "greedy", "static:T,P")


@dataclass(frozen=True)
class Strategy:
    name: str
    temperature: float | None = None  # static strategies only
    top_p: float | None = None

    @property
    def learned(self) -> bool:
        return self.name == "autodeco"


def parse_strategy(text: str) -> Strategy:
    """Parse a strategy name; unknown names fail listing the valid ones."""
    text = text.strip()
    if text in ("autodeco", "greedy"):
        return Strategy(text)
    if text.startswith("static:"):
        parts = text[len("static:") :].split(",")
        try:
            temperature, top_p = (float(x) for x in parts)
        except ValueError:
            raise ValueError(f"Strategy {text!r}: write static:T,P with two numbers, e.g. static:0.7,0.9.") from None
        if not temperature > 0 or not 0 < top_p <= 1:
            raise ValueError(f"Strategy {text!r}: T must be > 0 and P in (0, 1]; use `greedy` for T = 0.")
        return Strategy("static", temperature, top_p)
    raise ValueError(f"Unknown strategy {text!r}; valid: {', '.join(STRATEGY_NAMES)}.")
