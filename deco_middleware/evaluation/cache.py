"""An append-only JSONL file of finished problems, so an interrupted evaluation resumes.

One line per (run fingerprint, task, decoding, problem) with every sample of that problem. A line is
written and flushed as soon as the problem's last sample finishes; a half-written last line (the
process was killed mid-write) is ignored on the next load, and that problem is simply redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DecoError
from .errors import ResultCacheError
from ..jsonl import iter_jsonl

CACHE_FORMAT = 1
_SAMPLE_KEYS = frozenset({"length", "score", "temperature_sums", "top_p_sums"})


def fingerprint(parts: dict[str, Any]) -> str:
    """A short stable hash of everything that changes a problem's samples."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultCache:
    """Finished problems on disk, keyed by ``(run, task, decoding, problem)``.

    ``path=None`` keeps everything in memory (nothing survives the process).
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._records: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.ignored_lines = 0
        # A killed writer can leave a last line without its newline; the next record must not be glued to it.
        self._needs_newline = False
        if self.path is not None:
            self._check_writable()
            if self.path.stat().st_size:
                self._load()

    def _check_writable(self) -> None:
        # Checked before any generation: a folder or an unwritable path used to fail only when the
        # first finished problem was written, after minutes of work.
        assert self.path is not None  # only called when a path was given
        if self.path.is_dir():
            raise ResultCacheError(f"The cache {self.path} is a folder; pass a file, e.g. {self.path / 'deco-eval-cache.jsonl'}.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8"):
                pass
        except OSError as error:
            raise ResultCacheError(f"The cache {self.path} cannot be written ({error.strerror or error}); "
                                   "pass another --cache file.") from None

    @staticmethod
    def _key(record: dict[str, Any]) -> tuple[str, str, str, str]:
        # A record the runner cannot use (no per-sample list) is ignored, and its problem redone.
        samples = record["samples"]
        if not isinstance(samples, list) or not all(isinstance(s, dict) and _SAMPLE_KEYS <= s.keys() for s in samples):
            raise TypeError("`samples` is not a list of finished samples")
        return (record["run"], record["task"], record["decoding"], record["problem"])

    def _load(self) -> None:
        assert self.path is not None  # only called when a path was given
        with open(self.path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                self._needs_newline = handle.read(1) != b"\n"

        def ignore(number: int, reason: str) -> None:
            self.ignored_lines += 1

        for _, record in iter_jsonl(self.path, error=DecoError, on_bad_line=ignore):
            try:
                self._records[self._key(record)] = record
            except (KeyError, TypeError):
                self.ignored_lines += 1

    def get(self, run: str, task: str, decoding: str, problem: str) -> dict[str, Any] | None:
        return self._records.get((run, task, decoding, problem))

    def put(self, record: dict[str, Any]) -> None:
        self._records[self._key(record)] = record
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(("\n" if self._needs_newline else "") + json.dumps(record) + "\n")
            self._needs_newline = False
            handle.flush()

    def __len__(self) -> int:
        return len(self._records)


__all__ = ["ResultCache", "fingerprint"]
