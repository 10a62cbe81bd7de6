"""The one JSONL reader: training records, task files and the evaluation cache all read through it.

Rules, the same for every file:

- UTF-8, with or without a byte-order mark (editors on Windows write one);
- blank lines (only whitespace) are skipped, so a trailing newline or a separating empty line is harmless;
- every other line is one JSON value; a line that is not fails naming the file, the line and the
  column, unless the caller tolerates bad lines (the append-only evaluation cache, whose last line
  may be half-written by a killed process) and counts them instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DecoError

_BOM = b"\xef\xbb\xbf"


def iter_jsonl(
    path: str | os.PathLike[str],
    *,
    error: Callable[[str], DecoError],
    on_bad_line: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of ``path``, 1-based line numbers.

    Args:
        path: the JSONL file; it must exist (callers check first, to name what they expected).
        error: the error class to raise (its message names the file and line), e.g. ``TaskSpecError``.
        on_bad_line: when given, a line that is not valid UTF-8 or JSON is passed here as
            ``(line number, reason)`` and skipped instead of raising.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                reason = (f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1}); "
                          "save the file as UTF-8")
                if on_bad_line is None:
                    raise error(f"{path}, line {number}: {reason}.") from None
                on_bad_line(number, reason)
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as bad:
                reason = f"not valid JSON ({bad.msg} at column {bad.colno})"
            except (RecursionError, ValueError) as bad:  # nesting too deep, an integer over 4300 digits
                reason = f"not readable JSON ({type(bad).__name__}: {str(bad)[:120]})"
            else:
                yield number, value
                continue
            if on_bad_line is None:
                raise error(f"{path}, line {number}: {reason}.") from None
            on_bad_line(number, reason)


def read_json_object(path: str | os.PathLike[str], *, error: Callable[[str], DecoError], fix: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a small metadata file), by the same rules as :func:`iter_jsonl`.

    Anything else (unreadable, bad UTF-8 or JSON, a list instead of an object) raises ``error`` with
    the file name and ``fix``, the sentence that tells the user what to do.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as bad:
        raise error(f"Cannot read {path} ({bad.strerror or bad}). {fix}") from None
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as bad:
        raise error(f"{path} is not valid UTF-8 (byte 0x{raw[bad.start]:02x} at offset {bad.start}). {fix}") from None
    except json.JSONDecodeError as bad:
        raise error(f"{path} is not valid JSON ({bad.msg} at line {bad.lineno}, column {bad.colno}). {fix}") from None
    except (RecursionError, ValueError) as bad:
        raise error(f"{path} is not readable JSON ({type(bad).__name__}). {fix}") from None
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, but it holds a {type(value).__name__}. {fix}")
    return value


__all__ = ["iter_jsonl", "read_json_object"]
