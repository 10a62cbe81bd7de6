"""Train and eval inputs that used to end in "Aborted.", a traceback or a late failure (issue 18, item 9).

Every case goes through the real CLI in-process (or the real loader) and must give one clean error
line from the error root, naming the file or value and the fix.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
typer_testing = pytest.importorskip("typer.testing")

from deco_middleware.cli.app import app  # noqa: E402
from deco_middleware.errors import DecoError, PromptTooLongError  # noqa: E402

runner = typer_testing.CliRunner()


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    from deco_middleware.training import build_cache

    records = [{"prompt": f"w{i} w{i + 1}", "completion": f"w{i + 2} w{i + 3} w{i + 4}"} for i in range(1, 30)]
    directory = tmp_path_factory.mktemp("bad") / "cache"
    build_cache(tiny_model, tiny_tokenizer, records, directory, progress=False)
    return directory


def _copy(cache_dir, tmp_path):
    target = tmp_path / "cache"
    shutil.copytree(cache_dir, target)
    return target


def _fit(cache, tmp_path, *extra):
    return runner.invoke(app, ["train", "fit", "--cache", str(cache), "--out", str(tmp_path / "heads"),
                               "--max-steps", "2", "--batch-tokens", "16", *extra])


def test_empty_npy_names_the_file(cache_dir, tmp_path):
    cache = _copy(cache_dir, tmp_path)
    (cache / "labels.npy").write_bytes(b"")
    result = _fit(cache, tmp_path)
    assert result.exit_code == 2 and "Aborted" not in result.output
    assert f"{cache / 'labels.npy'} is unreadable" in _one_line(result.stderr)
    assert "Rebuild the cache with `deco train cache`" in _one_line(result.stderr)


@pytest.mark.parametrize(("content", "expected"), [
    (b"[1, 2]", "must hold a JSON object, but it holds a list"),
    (b'{"format": 1, "name": "caf\xe9"}', "is not valid UTF-8 (byte 0xe9"),
    (b"{format", "is not valid JSON"),
])
def test_bad_meta_json_names_the_file(cache_dir, tmp_path, content, expected):
    cache = _copy(cache_dir, tmp_path)
    (cache / "meta.json").write_bytes(content)
    result = _fit(cache, tmp_path)
    assert result.exit_code == 2, result.output
    assert f"{cache / 'meta.json'} {expected}" in _one_line(result.stderr)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip at all", b"\x80\x02}q\x00."])
def test_empty_or_corrupt_checkpoint_is_a_clean_error(cache_dir, tmp_path, content):
    cache = _copy(cache_dir, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "checkpoint.pt").write_bytes(content)
    result = _fit(cache, tmp_path, "--work-dir", str(work))
    assert result.exit_code == 2 and "Aborted" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"The checkpoint {work / 'checkpoint.pt'}" in _one_line(result.stderr)
    assert "pass `--no-resume`" in _one_line(result.stderr)


@pytest.mark.parametrize("command", [["generate", "hi"], ["trace", "hi"], ["train", "fit", "--cache", "c", "--out", "o"],
                                     ["eval", "--task", "t", "--strategy", "greedy"]])
def test_a_huge_seed_is_refused_by_the_option(command):
    result = runner.invoke(app, [*command, "--seed", str(2**70)])
    assert result.exit_code == 2
    assert "Invalid value for '--seed'" in result.output and "4294967295" in result.output


def test_eval_cache_that_is_a_folder_fails_before_the_model_loads(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("deco_middleware.default_model.load_model", lambda *a, **k: calls.append(a) or 1 / 0)
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"prompt": "1+1?", "answer": "2"}\n')
    result = runner.invoke(app, ["eval", "--task", str(tasks), "--strategy", "greedy", "--cache", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"The cache {tmp_path} is a folder" in _one_line(result.stderr) and calls == []


def test_eval_cache_record_without_samples_is_redone_not_a_key_error(tmp_path):
    from deco_middleware.evaluation.cache import ResultCache

    path = tmp_path / "cache.jsonl"
    good = {"run": "r", "task": "t", "decoding": "d", "problem": "1",
            "samples": [{"length": 2, "score": 1.0, "temperature_sums": [1, 1], "top_p_sums": [1, 1]}]}
    lines = [good, {**good, "problem": "2", "samples": None}, {k: v for k, v in good.items() if k != "samples"} | {"problem": "3"},
             {**good, "problem": "4", "samples": [{"length": 2}]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cache = ResultCache(path)
    assert len(cache) == 1 and cache.ignored_lines == 3
    assert cache.get("r", "t", "d", "2") is None


def test_summary_json_with_bad_utf8_names_the_file(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "w1", "completion": "w2"}\n')
    (tmp_path / "data.summary.json").write_bytes(b'{"source": "\xff"}')
    result = runner.invoke(app, ["train", "cache", "--data", str(data), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'data.summary.json'} is not valid UTF-8" in _one_line(result.stderr)


def test_prompt_longer_than_the_context_is_refused(tiny_model, tiny_tokenizer):
    from deco_middleware.generation import generate_text

    context = tiny_model.config.max_position_embeddings  # 256 in the tiny test model
    long_prompt = " ".join(f"w{i % 100}" for i in range(context))
    with pytest.raises(PromptTooLongError, match=rf"The prompt is {context} tokens .* the model's context holds {context}"):
        generate_text(long_prompt, model=tiny_model, tokenizer=tiny_tokenizer, strategy="greedy", max_new_tokens=4)
    with pytest.raises(PromptTooLongError, match="lower `max_new_tokens` to at most 6"):
        generate_text(" ".join(["w1"] * (context - 6)), model=tiny_model, tokenizer=tiny_tokenizer, strategy="greedy",
                      max_new_tokens=7)
    short = generate_text("w1 w2", model=tiny_model, tokenizer=tiny_tokenizer, strategy="greedy", max_new_tokens=3)
    assert len(short["token_ids"]) <= 3
    assert issubclass(PromptTooLongError, DecoError) and issubclass(PromptTooLongError, ValueError)


def test_ort_prompt_longer_than_the_context_is_refused():
    from pathlib import Path

    from deco_middleware.ort import generate_text_ort

    asset = Path(__file__).parent / "assets" / "ort_tiny" / "lm"
    context = json.loads((asset / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(PromptTooLongError, match=f"the model's context holds {context} positions"):
        generate_text_ort(" ".join(["w1"] * context), model=str(asset), strategy="greedy", max_new_tokens=4)
