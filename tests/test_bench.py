"""`deco bench` on tiny models: the shape of its result, never its timings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from deco_middleware import DecodingHeads

ORT_ASSET = Path(__file__).parent / "assets" / "ort_tiny"
STEP_PARTS = {"heads_onnx", "resolve", "temperature", "nucleus", "nucleus_full_sort"}


def check_runs(result, backend, batches):
    runs = [run for run in result["runs"] if run["backend"] == backend]
    assert [run["batch"] for run in runs] == list(batches)
    for run in runs:
        assert run["time_ratio"] == pytest.approx(run["baseline_tokens_per_s"] / run["autodeco_tokens_per_s"])
        assert run["autodeco_step_ms"] * run["new_tokens"] == pytest.approx(run["batch"] * run["new_tokens"] / run["autodeco_tokens_per_s"] * 1e3)
        assert run["peak_rss_mb"] > 0 and run["cpu_time_ratio"] > 0
        assert len(run["baseline_wall_s"]) == len(run["autodeco_wall_s"]) == run["repeats"]
    assert set(result["heads_step_us"][backend]) == {str(b) for b in batches}


def test_torch_backend_reports_interleaved_ratios_and_step_parts(tiny_model, tiny_tokenizer, tiny_heads):
    from deco_middleware.bench import run_bench, to_markdown

    result = run_bench(tiny_model, tiny_tokenizer, tiny_heads, batch_sizes=(1, 3), new_tokens=3, repeats=1)
    check_runs(result, "torch", (1, 3))
    parts = result["heads_step_us"]["torch"]["3"]
    assert set(parts) >= STEP_PARTS | {"tap", "baseline_warpers"}
    assert all(value > 0 for value in parts.values())
    for run in result["runs"]:
        assert run["in_loop_us"]["plain_warpers"] > 0 and run["in_loop_us"]["learned_pair"] > 0
    table = to_markdown(result)
    assert "| torch | 3 |" in table and "torch backend" in table and "inside `generate()`" in table
    json.dumps(result)  # the CLI writes it as JSON


def test_in_loop_timing_wraps_every_processor_call_of_every_step(tiny_model, tiny_tokenizer, tiny_heads):
    import transformers

    from deco_middleware.bench import _per_step, _timed_processors

    spent: list[float] = []
    warpers = [transformers.TemperatureLogitsWarper(0.7), transformers.TopPLogitsWarper(0.9)]
    inputs = dict(tiny_tokenizer(["w1 w2 w3"], return_tensors="pt"))
    tiny_model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=True, temperature=1.0, top_p=1.0,
                        top_k=0, pad_token_id=3, logits_processor=_timed_processors(warpers, spent))
    assert len(spent) == 4 * 2 and all(value > 0 for value in spent)
    assert _per_step([1.0, 2.0, 10.0, 20.0, 100.0, 200.0], 2) == 30.0


@pytest.fixture(scope="module")
def ort_pair():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    from deco_middleware.ort import ChatTokenizer, OnnxCausalLM

    lm = OnnxCausalLM(ORT_ASSET / "lm")
    return lm, ChatTokenizer(ORT_ASSET / "lm"), DecodingHeads.from_pretrained(ORT_ASSET / "heads")


def test_ort_backend_compares_the_same_loop_with_and_without_heads(ort_pair):
    from deco_middleware.bench import run_bench, to_markdown

    lm, tokenizer, heads = ort_pair
    result = run_bench(None, None, heads, batch_sizes=(2,), new_tokens=3, repeats=1, ort_lm=lm, ort_tokenizer=tokenizer,
                       skipped={"torch": "not asked"})
    check_runs(result, "ort", (2,))
    assert set(result["heads_step_us"]["ort"]["2"]) >= STEP_PARTS | {"baseline_filters"}
    assert "torch" not in result["heads_step_us"]
    table = to_markdown(result)
    assert "| ort | 2 |" in table and "Skipped backend `torch`: not asked" in table


def test_ort_plain_baseline_is_the_static_sampler_of_the_same_loop(ort_pair, monkeypatch):
    """The plain ORT path must be OnnxGenerator with T=0.7, P=0.9 and no heads; the learned one has the heads."""
    from deco_middleware import bench
    from deco_middleware.ort import OnnxGenerator

    lm, tokenizer, heads = ort_pair
    made = []
    original = OnnxGenerator.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(OnnxGenerator, "__init__", record)
    bench.bench_ort(lm, tokenizer, heads, batch_sizes=(1,), new_tokens=2, repeats=1)
    plain, learned = made
    assert plain.heads is None and plain.lm is learned.lm
    # T and P are the static predictor's own (no longer smuggled in as heads-less scales, issue #17).
    assert (plain.predictor.temperature, plain.predictor.top_p) == (bench.PLAIN_TEMPERATURE, bench.PLAIN_TOP_P)
    assert learned.heads is heads and learned.settings.temperature_scale == 1.0


def test_nothing_to_benchmark_is_an_error(tiny_heads):
    from deco_middleware.bench import run_bench

    with pytest.raises(ValueError, match="Nothing to benchmark"):
        run_bench(None, None, tiny_heads)


def test_cli_refuses_an_unknown_backend():
    typer_testing = pytest.importorskip("typer.testing")
    from deco_middleware.cli.app import app

    result = typer_testing.CliRunner().invoke(app, ["bench", "--backend", "gpu"])
    assert result.exit_code == 2
    assert ("--backend takes `all` or a comma-separated list of torch, optimum, ort, genai, vllm; got 'gpu'"
            in " ".join(result.output.split()))


def test_cli_bench_vllm_without_vllm_names_the_install_line():
    typer_testing = pytest.importorskip("typer.testing")
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here (tests/test_vllm.py runs the backend)")
    from deco_middleware.cli.app import app

    result = typer_testing.CliRunner().invoke(app, ["bench", "--backend", "vllm"])
    assert result.exit_code == 2, result.output
    assert "vllm is not installed (pip install torch==2.13.0 && pip install 'deco-middleware[vllm]'" in " ".join(result.output.split())


def test_optimum_backend_times_hf_generate_on_the_onnx_runtime_model(ort_pair):
    """The Optimum backend: Hugging Face's own warpers vs LearnedDecoding on the same ORT model."""
    pytest.importorskip("optimum.onnxruntime")
    from deco_middleware.bench import run_bench, to_markdown
    from deco_middleware.ort import ORTModelForCausalLMWithHiddenStates
    from deco_middleware.ort.compat import load_tokenizer

    _, _, heads = ort_pair
    model = ORTModelForCausalLMWithHiddenStates.from_pretrained(ORT_ASSET / "lm")
    result = run_bench(None, None, heads, batch_sizes=(1, 2), new_tokens=3, repeats=1, optimum_model=model,
                       optimum_tokenizer=load_tokenizer(ORT_ASSET / "lm"))
    check_runs(result, "optimum", (1, 2))
    assert set(result["heads_step_us"]["optimum"]["2"]) >= STEP_PARTS | {"tap", "baseline_warpers"}
    assert "| optimum | 2 |" in to_markdown(result)


def test_optimum_is_skipped_with_a_reason_without_optimum_or_an_export(tmp_path):
    pytest.importorskip("typer")
    from deco_middleware._deps import is_available
    from deco_middleware.cli.cmd_bench import _optimum_unavailable

    reason = _optimum_unavailable(str(tmp_path))
    expected = "deco export-lm" if is_available("optimum.onnxruntime") else "optimum-onnx is not installed"
    assert reason is not None and expected in reason


def test_ort_is_skipped_with_a_reason_for_a_folder_that_is_not_an_export(tmp_path):
    pytest.importorskip("typer")
    from deco_middleware.cli.cmd_bench import _ort_unavailable

    reason = _ort_unavailable(str(tmp_path))
    assert reason is not None and "deco export-lm" in reason
    assert _ort_unavailable(str(ORT_ASSET / "lm")) in (None, "onnxruntime / tokenizers are not installed (pip install 'deco-middleware[ort-app]')")
