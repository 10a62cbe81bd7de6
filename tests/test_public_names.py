"""Public names: every package pins a sorted ``__all__``; every error and warning lives in ``errors.py``."""

from __future__ import annotations

import ast
import importlib
import os
import stat
import threading
from pathlib import Path

import pytest

import deco_middleware
from deco_middleware import errors

PACKAGE = Path(deco_middleware.__file__).parent
PACKAGES = sorted(
    ".".join(("deco_middleware", *init.parent.relative_to(PACKAGE).parts))
    for init in PACKAGE.rglob("__init__.py")
)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_package_pins_a_sorted_importable_all(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # an optional extra (torch, transformers, typer, onnx) is not installed
        pytest.skip(f"{name} needs an extra: {error}")
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list) and exported, f"{name} has no __all__"
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for public in exported:
        try:
            value = getattr(module, public)
        except ImportError:  # a lazily imported name whose extra is missing: it exists, with an install hint
            continue
        assert value is not None, f"{name}.{public}"


def test_every_error_and_warning_derives_from_a_root():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, (errors.DecoError, errors.DecoWarning)), name
        if cls not in (errors.DecoError, errors.DecoWarning) and issubclass(cls, errors.DecoError):
            others = [base for base in cls.__mro__ if base.__module__ == "builtins" and base not in (Exception, BaseException, object)]
            assert others or cls is errors.TrainingInterrupted, f"{name} inherits no built-in it stands in for"
    assert errors.__all__ == sorted(errors.__all__)


def test_error_and_warning_classes_are_defined_only_in_errors_py():
    # Internal helpers that never escape their module (they are wrapped into a root error at once).
    internal = {("heads/_onnx_scan.py", "MalformedOnnxError")}
    found = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Warning", "Interrupted", "Exception")):
                if (relative, node.name) not in internal:
                    found.append(f"{relative}: {node.name}")
    assert not found, f"define these in deco_middleware/errors.py and re-import them: {found}"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("deco_middleware.manifest", "UnknownKeysWarning"),
        ("deco_middleware.evaluation.errors", "TaskSpecError"),
        ("deco_middleware.evaluation", "UnknownStrategyError"),
        ("deco_middleware.training.data", "TrainingDataError"),
        ("deco_middleware.training.cache", "CacheError"),
        ("deco_middleware.training", "TrainingInterrupted"),
        ("deco_middleware.hf", "StackedWarpersWarning"),
        ("deco_middleware.hf.processors", "NonFiniteHiddenStateWarning"),
        ("deco_middleware.ort", "UnsupportedGraphError"),
        ("deco_middleware.ort.export", "ExportValidationError"),
        ("deco_middleware.genai", "GenaiModelError"),
        ("deco_middleware.genai", "GenaiExportError"),
        ("deco_middleware.genai.export", "GenaiExportError"),
        ("deco_middleware.viz", "TraceDocumentError"),
        ("deco_middleware.viz.stream", "TraceStreamerError"),
    ],
)
def test_old_import_paths_still_work(module, name):
    try:
        imported = importlib.import_module(module)
    except ImportError as error:
        pytest.skip(f"{module} needs an extra: {error}")
    assert getattr(imported, name) is getattr(errors, name)


def test_training_interrupted_joins_the_root():
    assert issubclass(errors.TrainingInterrupted, errors.DecoError)


def test_atomic_write_never_touches_the_umask(tmp_path, monkeypatch):
    from deco_middleware._io import atomic_write_bytes, current_umask

    umask = current_umask()

    def forbidden(_mask):
        raise AssertionError("os.umask was called")

    monkeypatch.setattr(os, "umask", forbidden)
    target = tmp_path / "sub" / "file.json"
    threads = [threading.Thread(target=atomic_write_bytes, args=(target, str(i).encode())) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in {str(i).encode() for i in range(8)}
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]  # no temporary file left behind
    if Path("/proc/self/status").is_file():
        assert current_umask() == umask  # read from /proc, not by setting it
