"""``python -m deco_middleware ...`` is the ``deco`` command (useful where new scripts are not on PATH yet)."""

from .cli import main

if __name__ == "__main__":
    main()
