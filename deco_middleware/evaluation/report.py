"""The evaluation's outputs: the JSON document, markdown tables, a bar chart with error bars and a
Pareto chart (pass@1 against pass@k)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..manifest import atomic_write_bytes
from .frontier import curve_temperature, frontier_table, paired_differences
from .runner import DecodingSummary


def results_document(results: Mapping[str, Mapping[str, DecodingSummary]], config: dict[str, Any],
                     compare_to: list[str] | None = None, groups: Mapping[str, list[str]] | None = None
                     ) -> dict[str, Any]:
    """``{"results": {TASK: {STRATEGY: {...}}}, "frontier": {...} | None, "config": {...}}``; NaN becomes ``null``.

    ``frontier`` holds every strategy's frontier gain over the static curve with its paired
    bootstrap interval (:func:`~.frontier.frontier_table`), when the run has the static sweep.
    ``compare_to`` adds ``"differences": {BASELINE: ...}``: every strategy's pass@1 and pass@k minus
    that baseline's, with paired bootstrap intervals (:func:`~.frontier.paired_differences`).
    ``groups`` (``{name: [task spec, ...]}``) adds each group's mean to both (``mean_over_groups``).
    """

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    body = {task: {name: clean(summary.to_dict()) for name, summary in by_strategy.items()} for task, by_strategy in results.items()}
    document = {"results": body, "frontier": clean(frontier_table(results, groups=groups)), "config": config}
    if compare_to:
        document["differences"] = {name: clean(paired_differences(results, name, groups=groups)) for name in compare_to}
    return document


def write_json(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    atomic_write_bytes(target, (json.dumps(document, indent=2) + "\n").encode())
    return target


def _percent(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _strategy_label(name: str, entry: dict[str, Any]) -> str:
    chosen = entry.get("chosen")
    if chosen:
        return f"{name} (T={chosen['temperature']:g}, P={chosen['top_p']:g})"
    tuned = entry.get("tuned_on_dev")
    if tuned:
        return f"{name} ({tuned['decoding']})"
    return name


def short_task_names(tasks: list[str]) -> dict[str, str]:
    """``rg:products?...`` -> ``products``; a repeated name gets a number (``products#2``)."""
    names: dict[str, str] = {}
    for task in tasks:
        base = task.split("?")[0].removeprefix("rg:").rsplit("/", 1)[-1]
        name, count = base, 1
        while name in names.values():
            count += 1
            name = f"{base}#{count}"
        names[task] = name
    return names


def markdown_table(document: dict[str, Any]) -> str:
    """One summary table (pass@1 % +- stderr, strategies x tasks), then a detail table per task."""
    results = document["results"]
    tasks = list(results)
    short = short_task_names(tasks)
    strategies: list[str] = []
    for by_strategy in results.values():
        strategies.extend(s for s in by_strategy if s not in strategies)
    lines = ["| strategy | " + " | ".join(short[t] for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for strategy in strategies:
        cells = []
        for task in tasks:
            entry = results[task].get(strategy)
            cells.append("—" if entry is None else f"{_percent(entry['pass@1'])} ± {_percent(entry['stderr'])}")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    out = ["pass@1 (%, mean over samples) ± standard error over problems", "", *lines, ""]
    out += [f"- `{short[task]}`: `{task}`" for task in tasks]
    for task in tasks:
        out += [
            "",
            f"**{short[task]}** (`{task}`)",
            "",
            "| strategy | pass@1 % | ± | pass@k % | maj@k % | k | problems | mean length | T mean (sd) | P mean (sd) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for strategy, entry in results[task].items():
            t, p = entry["temperature"], entry["top_p"]
            out.append(
                f"| {_strategy_label(strategy, entry)} | {_percent(entry['pass@1'])} | {_percent(entry['stderr'])} | "
                f"{_percent(entry['pass@k'])} | {_percent(entry.get('maj@k'))} | {entry['k']} | {entry['problems']} | "
                f"{entry['mean_length']:.1f} | {t['mean']:.3f} ({t['std']:.3f}) | {p['mean']:.3f} ({p['std']:.3f}) |"
            )
    out += _frontier_lines(document.get("frontier"), short)
    for baseline, differences in (document.get("differences") or {}).items():
        out += _difference_lines(baseline, differences, short)
    return "\n".join(out) + "\n"


def _difference_lines(baseline: str, differences: dict[str, Any] | None, short: dict[str, str]) -> list[str]:
    if not differences:
        return ["", f"**Paired differences against `{baseline}`**: `{baseline}` did not run on any task."]
    tasks = list(differences["tasks"])
    names: list[str] = []
    for entries in differences["tasks"].values():
        names.extend(n for n in entries if n not in names)
    boot = differences["bootstrap"]

    def cell(entry: dict[str, Any] | None, metric: str) -> str:
        if entry is None:
            return "—"
        return (f"{100 * entry[metric]:+.1f} [{100 * entry[metric + '_low']:+.1f}, "
                f"{100 * entry[metric + '_high']:+.1f}]")

    out: list[str] = []
    for metric in ("pass@1", "pass@k"):
        groups = differences.get("mean_over_groups") or {}
        out += ["", f"**{metric} minus `{baseline}`'s** (points; {100 * boot['confidence']:.0f}% paired bootstrap over "
                f"problems, {boot['resamples']} resamples, seed {boot['seed']})", "",
                "| strategy | " + " | ".join(short.get(t, t) for t in tasks) + " | mean |" + _group_header(differences),
                "|---|" + "---|" * (len(tasks) + 1 + len(groups))]
        for name in names:
            cells = [cell(differences["tasks"][t].get(name), metric) for t in tasks]
            cells.append(cell(differences["mean_over_tasks"].get(name), metric))
            cells += [cell(group.get(name), metric) for group in groups.values()]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _frontier_lines(frontier: dict[str, Any] | None, short: dict[str, str]) -> list[str]:
    if not frontier:
        return []
    tasks = list(frontier["tasks"])
    names: list[str] = []
    for entries in frontier["tasks"].values():
        names.extend(n for n in entries if n not in names)
    boot = frontier["bootstrap"]
    out = [
        "",
        f"**Frontier gain** (pass@1 points above the static-T curve at the same pass@k; "
        f"{100 * boot['confidence']:.0f}% paired bootstrap over problems, {boot['resamples']} resamples, seed {boot['seed']})",
        "",
        "| strategy | " + " | ".join(short.get(t, t) for t in tasks) + " | mean |" + _group_header(frontier),
        "|---|" + "---|" * (len(tasks) + 1 + len(frontier.get("mean_over_groups") or {})),
    ]
    for name in names:
        cells = []
        for task in tasks:
            entry = frontier["tasks"][task].get(name)
            cells.append("—" if entry is None else _gain_cell(entry))
        mean = frontier["mean_over_tasks"].get(name)
        cells.append("—" if mean is None else _gain_cell(mean))
        for group in (frontier.get("mean_over_groups") or {}).values():
            cells.append("—" if name not in group else _gain_cell(group[name]))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _group_header(table: dict[str, Any]) -> str:
    return "".join(f" {group} mean |" for group in (table.get("mean_over_groups") or {}))


def _gain_cell(entry: dict[str, Any]) -> str:
    return f"{100 * entry['gain']:+.1f} [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"


def write_markdown(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    atomic_write_bytes(target, markdown_table(document).encode())
    return target


def write_plot(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """A grouped bar chart: one group per task, one bar per strategy, standard-error whiskers."""
    from .._deps import require

    matplotlib = require("matplotlib", purpose="The --plot bar chart")
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    results = document["results"]
    tasks = list(results)
    strategies: list[str] = []
    for by_strategy in results.values():
        strategies.extend(s for s in by_strategy if s not in strategies)
    width = 0.8 / max(len(strategies), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 + 0.35 * len(tasks) * len(strategies)), 4.5))
    colors = plt.get_cmap("tab20")
    for index, strategy in enumerate(strategies):
        xs, heights, errors = [], [], []
        for task_index, task in enumerate(tasks):
            entry = results[task].get(strategy)
            if entry is None or entry["pass@1"] is None:
                continue
            xs.append(task_index - 0.4 + width * (index + 0.5))
            heights.append(100 * entry["pass@1"])
            errors.append(100 * (entry["stderr"] or 0.0))
        axes.bar(xs, heights, width, yerr=errors, capsize=2, label=strategy, color=colors(index % 20))
    axes.set_xticks(range(len(tasks)))
    short = short_task_names(tasks)
    axes.set_xticklabels([short[task] for task in tasks], rotation=15, ha="right")
    axes.set_ylabel("pass@1 (%) ± standard error")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small", ncol=2, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target


def _scale_of(decoding: str) -> float | None:
    """The temperature scale of a both-heads decoding (``autodeco`` = 1, ``autodeco@S`` = S), else None."""
    if decoding == "autodeco":
        return 1.0
    if decoding.startswith("autodeco@"):
        try:
            return float(decoding.split("@", 1)[1])
        except ValueError:
            return None
    return None


def write_pareto(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """pass@1 against pass@k, one panel per task and one for the mean over tasks: the static-T curve,
    the heads' temperature-scale curve, and every other strategy as a labelled point."""
    from .._deps import require

    matplotlib = require("matplotlib", purpose="The --pareto chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = document["results"]
    tasks = list(results)
    panels: dict[str, dict[str, tuple[float, float, str]]] = {}
    for task in tasks:
        panels[task] = {
            name: (100 * entry["pass@k"], 100 * entry["pass@1"], entry["decoding"])
            for name, entry in results[task].items() if entry["pass@1"] is not None and entry["pass@k"] is not None
        }
    if len(tasks) > 1:
        common = [n for n in panels[tasks[0]] if all(n in panels[t] for t in tasks)]
        panels["mean over tasks"] = {
            n: (sum(panels[t][n][0] for t in tasks) / len(tasks), sum(panels[t][n][1] for t in tasks) / len(tasks),
                panels[tasks[0]][n][2]) for n in common
        }
    short = short_task_names(tasks)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes_grid = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.0 * rows), squeeze=False)
    for axes, (panel, points) in zip(axes_grid.flat, panels.items()):
        static = sorted((curve_temperature(d), x, y) for x, y, d in points.values() if curve_temperature(d) is not None)
        heads = sorted((_scale_of(d), x, y) for x, y, d in points.values() if _scale_of(d) is not None)
        if static:
            axes.plot([p[1] for p in static], [p[2] for p in static], "o-", color="tab:blue", label="static T (P=1)")
            for t, x, y in static:
                axes.annotate(f"{t:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points", color="tab:blue")
        if heads:
            axes.plot([p[1] for p in heads], [p[2] for p in heads], "s-", color="tab:red", label="heads × scale S")
            for scale, x, y in heads:
                axes.annotate(f"{scale:g}", (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points", color="tab:red")
        for name, (x, y, decoding) in points.items():
            if curve_temperature(decoding) is None and _scale_of(decoding) is None:
                axes.plot([x], [y], "^", color="0.35", markersize=4)
                axes.annotate(name, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points", color="0.25")
        axes.set_title(short.get(panel, panel), fontsize=10)
        axes.set_xlabel("pass@k (%)")
        axes.set_ylabel("pass@1 (%)")
        axes.grid(alpha=0.3)
    for axes in list(axes_grid.flat)[len(panels):]:
        axes.set_visible(False)
    axes_grid.flat[0].legend(fontsize="small", frameon=False)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


__all__ = ["markdown_table", "results_document", "write_json", "write_markdown", "write_pareto", "write_plot"]
