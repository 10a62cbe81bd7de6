"""The ``deco`` command line. Needs the ``cli`` extra (typer, rich); without it, a one-line hint."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    try:
        from .app import app
    except ImportError as error:  # typer/rich or torch missing: say which extra brings it
        missing = getattr(error, "name", None) or str(error)
        print(
            f"deco: the command line needs `{missing}`. Install it with: "
            "pip install torch==2.13.0 && pip install 'deco-middleware[cli,torch]'",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    app()
