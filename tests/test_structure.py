"""Layering: the library never imports the CLI (nor typer/rich), and deco_middleware has no import cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deco_middleware"
CLI_ONLY = ("typer", "rich")


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _import_graph() -> dict[str, set[str]]:
    """Every import (module level or inside a function) from one deco_middleware module to another."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    child = f"{target}.{alias.name}"
                    edges.add(child if child in modules else target)
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_deco_middleware_modules():
    graph = _import_graph()
    assert "deco_middleware.sampling" in graph and graph["deco_middleware.engine"]  # the graph was read
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_the_cli():
    graph = _import_graph()
    upward = {
        (name, target)
        for name, targets in graph.items()
        if not name.startswith("deco_middleware.cli") and name != "deco_middleware.__main__"
        for target in targets
        if target.startswith("deco_middleware.cli")
    }
    assert upward == set()


def test_importing_any_library_module_pulls_in_no_cli_typer_or_rich():
    """Each library module is imported in a fresh process; what it brought into sys.modules is checked."""
    library = sorted(name for name in _modules() if not name.startswith("deco_middleware.cli")
                     and name != "deco_middleware.__main__")
    script = textwrap.dedent(f"""
        import importlib, json, sys
        from deco_middleware.errors import MissingDependencyError
        report = {{}}
        for name in {library!r}:
            before = set(sys.modules)
            try:
                importlib.import_module(name)
            except MissingDependencyError:
                report[name] = "skipped"  # an optional extra this environment lacks
                continue
            new = set(sys.modules) - before
            report[name] = sorted(m for m in new if m.split(".")[0] in {CLI_ONLY!r} or m.startswith("deco_middleware.cli"))
        print(json.dumps(report))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == set(library)
    offenders = {name: pulled for name, pulled in report.items() if pulled not in ("skipped", [])}
    assert offenders == {}
    assert report["deco_middleware.engine"] == [] and report["deco_middleware.generation"] == []


def test_generate_text_runs_without_typer_or_rich(tiny_heads_dir):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["typer"] = None  # any `import typer` / `import rich` now fails
        sys.modules["rich"] = None
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import make_tiny_model, make_tiny_tokenizer
        from deco_middleware.generation import generate_text
        result = generate_text("w1 w2", model=make_tiny_model(), tokenizer=make_tiny_tokenizer(),
                               heads={str(tiny_heads_dir)!r}, max_new_tokens=3, seed=1)
        assert len(result["token_ids"]) == len(result["temperature"]) >= 1
        print(sorted(m for m in sys.modules if m.startswith("deco_middleware.cli")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
