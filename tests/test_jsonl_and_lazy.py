"""One JSONL reader for every file (training data, task files, the eval cache) and one lazy loader."""

from __future__ import annotations

import importlib
import json

import pytest

from deco_middleware.errors import DecoError
from deco_middleware.jsonl import iter_jsonl


class _Bad(DecoError, ValueError):
    pass


def test_reader_rules_blank_lines_bom_and_named_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n[2]\n')
    assert list(iter_jsonl(path, error=_Bad)) == [(1, {"a": 1}), (4, [2])]
    path.write_bytes(b'{"a": 1}\n{"a": "\xc3"}\n')
    with pytest.raises(_Bad, match=r"x.jsonl, line 2: not valid UTF-8 \(byte 0xc3 at column 8\)"):
        list(iter_jsonl(path, error=_Bad))
    path.write_bytes(b"[" * 5000 + b"]" * 5000 + b"\n")
    with pytest.raises(_Bad, match="line 1: not readable JSON"):
        list(iter_jsonl(path, error=_Bad))


def test_task_file_with_a_bom_loads(tmp_path):
    from deco_middleware.evaluation.tasks import load_task

    path = tmp_path / "tasks.jsonl"
    path.write_bytes("\ufeff".encode() + json.dumps({"prompt": "2+2?", "answer": "4"}).encode() + b"\n")
    task = load_task(str(path))
    assert [p.prompt for p in task.problems] == ["2+2?"]


def test_task_file_with_bad_utf8_names_the_file(tmp_path):
    from deco_middleware.evaluation.errors import TaskSpecError
    from deco_middleware.evaluation.tasks import load_task

    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(TaskSpecError, match=r"latin1.jsonl, line 1: not valid UTF-8"):
        load_task(str(path))


def test_eval_cache_skips_a_half_written_multibyte_last_line(tmp_path):
    from deco_middleware.evaluation.cache import ResultCache

    path = tmp_path / "cache.jsonl"
    good = {"run": "r", "task": "t", "decoding": "d", "problem": "1", "samples": []}
    # A killed writer cut the last line inside a two-byte character.
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"run": "r", "task": "\xc3')
    cache = ResultCache(path)
    assert len(cache) == 1 and cache.ignored_lines == 1
    cache.put({**good, "problem": "2"})
    assert len(ResultCache(path)) == 2  # the new record was not glued to the broken line


@pytest.mark.parametrize(("package", "name"), [("deco_middleware", "DecodingSession"),
                                               ("deco_middleware.viz", "RunSpec"),
                                               ("deco_middleware.ort", "ExportReport")])
def test_lazy_names_are_imported_once_and_cached(package, name):
    pytest.importorskip("torch")
    module = importlib.import_module(package)
    value = getattr(module, name)
    assert vars(module)[name] is value  # cached: the next lookup does not reach __getattr__
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        getattr(module, "no_such_name")
