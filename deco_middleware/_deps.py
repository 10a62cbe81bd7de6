"""Optional dependencies: probed once, imported only where used, with a one-line install hint."""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from types import ModuleType

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


def is_torch_available() -> bool:
    return is_available("torch")


def is_transformers_available() -> bool:
    return is_available("transformers")


def require(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or fail with the ``pip install`` line that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = _EXTRA_FOR_MODULE.get(module.split(".")[0], module)
        hint = f"pip install 'deco-middleware[{extra}]'"
        if extra == "torch":
            hint = "pip install torch==2.13.0 && " + hint
        raise MissingDependencyError(
            f"{purpose} needs `{module}`, which is not installed ({error}). Install it with: {hint}"
        ) from error
