"""Colour scales shared by the HTML page, the PNG and the terminal view.

Temperature is diverging around 1 (the model's own distribution): blue where the heads sharpen
(T < 1, down to greedy at 0), red where they flatten (T > 1). Top-p is sequential: pale where the
nucleus keeps everything (P = 1), deep purple where it is narrow. Stops are light tints so black
text stays readable on them.
"""

from __future__ import annotations

from itertools import pairwise

# (value, (r, g, b)) stops, linearly interpolated; values outside the range are clamped.
TEMPERATURE_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (49, 130, 189)),
    (0.5, (158, 202, 225)),
    (1.0, (247, 247, 247)),
    (1.5, (252, 174, 145)),
    (2.0, (222, 45, 38)),
)
TOP_P_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (117, 107, 177)),
    (0.5, (188, 189, 220)),
    (0.9, (239, 237, 245)),
    (1.0, (252, 251, 253)),
)
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)


def _interpolate(value: float, stops: tuple[tuple[float, tuple[int, int, int]], ...]) -> tuple[int, int, int]:
    if value <= stops[0][0]:
        return stops[0][1]
    for (left, left_rgb), (right, right_rgb) in pairwise(stops):
        if value <= right:
            weight = (value - left) / (right - left)
            return tuple(round(a + (b - a) * weight) for a, b in zip(left_rgb, right_rgb))  # type: ignore[return-value]
    return stops[-1][1]


def temperature_rgb(temperature: float) -> tuple[int, int, int]:
    return _interpolate(temperature, TEMPERATURE_STOPS)


def top_p_rgb(top_p: float) -> tuple[int, int, int]:
    return _interpolate(top_p, TOP_P_STOPS)


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def css_gradient(stops: tuple[tuple[float, tuple[int, int, int]], ...]) -> str:
    """A left-to-right CSS ``linear-gradient`` of the scale, for legends."""
    low, high = stops[0][0], stops[-1][0]
    parts = [f"{hex_color(rgb)} {100 * (value - low) / (high - low):.0f}%" for value, rgb in stops]
    return f"linear-gradient(to right, {', '.join(parts)})"
