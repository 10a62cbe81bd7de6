"""The new-user path: install hints keep their extra, missing dependencies are found before the
expensive work, and small things (errors, colours, help width, the PNG's axis).

A missing optional package is simulated with ``sys.modules[name] = None`` (Python then raises
ImportError on import): the shared dev venv cannot uninstall packages. Everything else is real.
"""

from __future__ import annotations

import io
import sys

import pytest

typer_testing = pytest.importorskip("typer.testing")
from deco_middleware.cli.app import app  # noqa: E402

runner = typer_testing.CliRunner()


def _block(monkeypatch, *modules: str) -> None:
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_generate_ort_without_optimum_names_the_extra_and_provisions_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DECO_MODEL_CACHE", str(tmp_path / "cache"))
    _block(monkeypatch, "optimum")
    result = runner.invoke(app, ["generate", "Hi", "--backend", "ort"])
    assert result.exit_code == 2, result.output
    assert "pip install 'deco-middleware[ort]'" in _one_line(result.stderr)
    assert not (tmp_path / "cache" / "SmolLM2-135M-Instruct").exists()  # checked before provisioning


def test_error_text_with_brackets_is_printed_verbatim(monkeypatch):
    from deco_middleware.errors import MissingDependencyError

    def failing(*args, **kwargs):
        raise MissingDependencyError("Install it with: pip install 'deco-middleware[train]' (see [docs]/x)")

    monkeypatch.setattr("deco_middleware.generation.generate_text", failing)
    result = runner.invoke(app, ["generate", "Hi"])
    assert result.exit_code == 2
    assert "error: Install it with: pip install 'deco-middleware[train]' (see [docs]/x)" in _one_line(result.stderr)


def test_load_model_ort_without_torch_suggests_the_ort_extra(monkeypatch):
    pytest.importorskip("torch")
    _block(monkeypatch, "torch")
    monkeypatch.delitem(sys.modules, "deco_middleware.ort.optimum_model", raising=False)
    from deco_middleware.errors import MissingDependencyError
    from deco_middleware.ort import load_model_ort

    with pytest.raises(MissingDependencyError, match=r"pip install torch==2.13.0 && pip install 'deco-middleware\[ort\]'"):
        load_model_ort("default")


def _refuse_loading(monkeypatch):
    calls = []
    monkeypatch.setattr("deco_middleware.default_model.load_model", lambda *a, **k: calls.append(a) or 1 / 0)
    return calls


def test_trace_png_without_matplotlib_fails_before_loading_the_model(monkeypatch, tmp_path):
    calls = _refuse_loading(monkeypatch)
    _block(monkeypatch, "matplotlib")
    result = runner.invoke(app, ["trace", "Hi", "--png", str(tmp_path / "t.png")])
    assert result.exit_code == 2, result.output
    assert "pip install 'deco-middleware[viz]'" in _one_line(result.stderr) and calls == []


def test_eval_plot_without_matplotlib_fails_before_the_evaluation(monkeypatch, tmp_path):
    calls = _refuse_loading(monkeypatch)
    _block(monkeypatch, "matplotlib")
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"prompt": "1+1?", "answer": "2"}\n')
    result = runner.invoke(app, ["eval", "--task", str(tasks), "--strategy", "greedy", "--plot", str(tmp_path / "p.png"),
                                 "--cache", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 2, result.output
    assert "pip install 'deco-middleware[viz]'" in _one_line(result.stderr) and calls == []


def test_unsupported_mode_error_names_the_class_not_the_model_repr(tiny_model, tiny_heads, tiny_inputs):
    from conftest import make_tiny_model

    from deco_middleware import LearnedDecoding, UnsupportedGenerationModeError

    with LearnedDecoding(tiny_heads).attach(tiny_model) as session:
        with pytest.raises(UnsupportedGenerationModeError) as caught:
            session.generate(**tiny_inputs, assistant_model=make_tiny_model(seed=5), max_new_tokens=2)
    message = str(caught.value)
    assert "`assistant_model=<LlamaForCausalLM>`" in message and "\n" not in message and len(message) < 300


def test_show_on_an_8_colour_terminal_uses_readable_foreground_colours():
    from rich.console import Console
    from _viz_samples import hostile_document

    from deco_middleware.viz import print_trace, trace_text

    sample = hostile_document()
    extremes = [0.1 if i % 2 == 0 else 1.9 for i in range(len(sample))]
    doc = type(sample).from_dict({**sample.to_dict(), "temperature": extremes})
    text = trace_text(doc, color_system="standard")
    assert len(text.spans) == len(doc)
    assert all("on " not in str(span.style) for span in text.spans)  # no background tint to map to white
    colours = ["blue" if "blue" in str(span.style) else "red" if "red" in str(span.style) else "" for span in text.spans]
    assert colours == ["blue" if t < 1 else "red" for t in extremes]
    out = io.StringIO()
    print_trace(doc, Console(file=out, force_terminal=True, color_system="standard", width=100))
    assert "\x1b[30;47m" not in out.getvalue() and "\x1b[47m" not in out.getvalue()  # never black on white


@pytest.mark.parametrize("command", [["train", "fit", "--help"], ["train", "all", "--help"], ["eval", "--help"]])
def test_help_at_80_columns_keeps_every_option_name(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, command, terminal_width=80)
    assert result.exit_code == 0
    assert "…" not in result.stdout
    expected = ["--validation-fraction", "--top-p-grad-to-temperature"] if command[0] == "train" else ["--oracle-temperatures"]
    assert all(name in result.stdout for name in expected)


def test_eval_progress_wraps_a_long_task_name(monkeypatch):
    from rich.console import Console

    from deco_middleware.cli import cmd_eval

    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    monkeypatch.setattr(cmd_eval, "console", console)
    progress = cmd_eval._RichProgress()
    label = "rg:basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=1 · autodeco [x]"
    progress.start(label, total=3, done=0)
    console.print(progress.display.get_renderable())
    assert "…" not in out.getvalue()
    # Wrapped over lines, every character kept (the other columns sit on the first line).
    shown = "".join(out.getvalue().split()).replace("0/30:00:00", "").replace("...", "")
    assert "".join(label.split()) in shown


def test_png_axis_stops_just_above_one_when_nothing_exceeds_it():
    from _viz_samples import hostile_document

    from deco_middleware.viz.png import y_axis_top

    doc = hostile_document()
    low = type(doc).from_dict({**doc.to_dict(), "temperature": [min(t, 0.9) for t in doc.temperature]})
    assert y_axis_top([low]) == pytest.approx(1.05)
    assert y_axis_top([doc]) == pytest.approx(max(1.0, *doc.temperature, *doc.top_p) * 1.05)


def test_bf16_speed_is_stated_once_with_its_measurement():
    """README, `load_model` and `deco eval --help` used to say "2.4x slower" and "3.5x faster": one
    measured statement now lives in the README, and the others point to it and to the script."""
    import re
    from pathlib import Path

    from deco_middleware.default_model import load_model

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    help_text = _one_line(runner.invoke(app, ["eval", "--help"], terminal_width=200).stdout)
    claims = re.compile(r"\d+(\.\d+)?x (slower|faster)")
    dtype_lines = [line for line in readme.splitlines() if "bf16" in line or "bfloat16" in line]
    for text in (*dtype_lines, load_model.__doc__ or "", help_text):
        assert not claims.search(text), text
    assert "took 0.52x the\n  float32 time in bf16" in readme and (root / "benchmarks" / "dtype_forward.py").is_file()
    assert "benchmarks/dtype_forward.py" in help_text and "Limitations" in (load_model.__doc__ or "")


@pytest.mark.parametrize(("command", "blocked", "extra"), [
    (["train", "data", "--out", "{tmp}/d.jsonl"], "reasoning_gym", "train"),
    (["train", "data", "--engine", "vllm", "--out", "{tmp}/d.jsonl"], "vllm", "vllm"),
    (["export-lm", "default", "{tmp}/onnx"], "optimum", "ort"),
])
def test_commands_name_their_extra_before_loading_anything(command, blocked, extra, tmp_path, monkeypatch):
    monkeypatch.setenv("DECO_MODEL_CACHE", str(tmp_path / "cache"))
    calls = _refuse_loading(monkeypatch)
    monkeypatch.setattr("deco_middleware.default_model.ensure_default_model", lambda: calls.append("provision") or 1 / 0)
    _block(monkeypatch, blocked)
    result = runner.invoke(app, [part.format(tmp=tmp_path) for part in command])
    assert result.exit_code == 2, result.output
    assert f"pip install 'deco-middleware[{extra}]'" in _one_line(result.stderr) and calls == []


def test_train_data_refuses_an_unknown_engine(tmp_path, monkeypatch):
    calls = _refuse_loading(monkeypatch)
    result = runner.invoke(app, ["train", "data", "--engine", "tgi", "--out", str(tmp_path / "d.jsonl")])
    assert result.exit_code == 2, result.output
    assert "`--engine` must be one of torch, vllm, got 'tgi'" in _one_line(result.output + (result.stderr or ""))
    assert calls == [] and not (tmp_path / "d.jsonl").exists()
