"""Optional dependencies: probed once, imported only where used, with a one-line install hint."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import ModuleType
from typing import Any

from .errors import MissingDependencyError

# Which extra of ``deco-middleware`` brings which importable module.
_EXTRA_FOR_MODULE = {
    "torch": "torch",
    "transformers": "torch",
    "gguf": "torch",
    "accelerate": "torch",
    "onnx": "torch",
    "typer": "cli",
    "rich": "cli",
    "reasoning_gym": "train",
    "matplotlib": "viz",
    "optimum": "ort",
    "tokenizers": "ort-app",
    "jinja2": "ort-app",
    "onnxruntime_genai": "genai",
}


@lru_cache(maxsize=None)
def is_available(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (a dotted name's parent is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return False


def require(module: str, *, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or fail with the ``pip install`` line that brings it.

    ``extra`` names the extra to suggest when the feature needs a larger one than the module's own
    (the Optimum backend needs ``[ort]``, which brings torch too, not just ``[torch]``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = extra or _EXTRA_FOR_MODULE.get(module.split(".")[0], module)
        hint = f"pip install 'deco-middleware[{extra}]'"
        if extra in ("torch", "ort"):  # both bring torch: pin it first, or pip pulls a multi-GB CUDA build
            hint = "pip install torch==2.13.0 && " + hint
        raise MissingDependencyError(
            f"{purpose} needs `{module}`, which is not installed ({error}). Install it with: {hint}"
        ) from error


def lazy_attributes(module_name: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A PEP 562 ``__getattr__`` for ``module_name`` that imports ``table[name]`` on first use.

    ``table`` maps an attribute to the module that defines it (absolute, or relative to
    ``module_name``). The value is stored in the package's namespace, so the import runs once and
    later lookups never reach ``__getattr__`` again.
    """
    import sys

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], module_name), name)
        setattr(sys.modules[module_name], name, value)
        return value

    return __getattr__
