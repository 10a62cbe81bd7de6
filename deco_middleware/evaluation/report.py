"""The evaluation's outputs: the JSON document, a markdown table and a bar chart with error bars."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..manifest import atomic_write_bytes
from .runner import DecodingSummary


def results_document(results: Mapping[str, Mapping[str, DecodingSummary]], config: dict[str, Any]) -> dict[str, Any]:
    """``{"results": {TASK: {STRATEGY: {...}}}, "config": {...}}``; NaN becomes ``null``."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    body = {task: {name: clean(summary.to_dict()) for name, summary in by_strategy.items()} for task, by_strategy in results.items()}
    return {"results": body, "config": config}


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
            "| strategy | pass@1 % | ± | pass@k % | k | problems | mean length | T mean (sd) | P mean (sd) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for strategy, entry in results[task].items():
            t, p = entry["temperature"], entry["top_p"]
            out.append(
                f"| {_strategy_label(strategy, entry)} | {_percent(entry['pass@1'])} | {_percent(entry['stderr'])} | "
                f"{_percent(entry['pass@k'])} | {entry['k']} | {entry['problems']} | {entry['mean_length']:.1f} | "
                f"{t['mean']:.3f} ({t['std']:.3f}) | {p['mean']:.3f} ({p['std']:.3f}) |"
            )
    return "\n".join(out) + "\n"


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


__all__ = ["markdown_table", "results_document", "write_json", "write_markdown", "write_plot"]
