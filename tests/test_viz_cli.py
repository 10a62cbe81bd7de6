"""`deco trace` and `deco generate --show`, in process, on a tiny model saved to a folder."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
typer_testing = pytest.importorskip("typer.testing")
pytest.importorskip("matplotlib")

from deco_middleware.cli.app import app  # noqa: E402
from deco_middleware.viz.runs import parse_run_strategy  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    directory = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def invoke(*args):
    result = typer_testing.CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


def test_trace_writes_html_png_and_json_with_a_compare_run(tiny_model_dir, tiny_heads_dir, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        "trace", "w1 w2 w3", "--model", tiny_model_dir, "--heads", tiny_heads_dir, "--max-new-tokens", 5,
        "--html", out / "t.html", "--png", out / "t.png", "--json", out / "t.json", "--compare", "static:0.7,0.9",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "t.json").read_text(encoding="utf-8"))
    main, other = data["runs"]
    for run in (main, other):
        assert 1 <= len(run["tokens"]) <= 5
        for key in ("token_ids", "temperature", "top_p", "nucleus_size", "token_prob"):
            assert len(run[key]) == len(run["tokens"]), key
        assert run["prompt"] == "w1 w2 w3"
    assert other["temperature"] == pytest.approx([0.7] * len(other["tokens"]))
    assert other["top_p"] == pytest.approx([0.9] * len(other["tokens"]))
    assert main["label"] == "autodeco" and other["label"] == "static T=0.7, P=0.9"
    page = (out / "t.html").read_text(encoding="utf-8")
    assert page.count('class="run"') == 2
    assert page.count('class="tok') == len(main["tokens"]) + len(other["tokens"])
    assert (out / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "autodeco" in result.output and "temperature: 0 greedy" in result.output


def test_trace_json_alone_is_one_document(tiny_model_dir, tiny_heads_dir, tmp_path):
    result = invoke(
        "trace", "w4 w5", "--model", tiny_model_dir, "--heads", tiny_heads_dir, "--max-new-tokens", 3,
        "--json", tmp_path / "t.json", "--compare", "greedy", "--quiet",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert set(data["runs"][1]["temperature"]) == {0.0}
    assert set(data["runs"][1]["nucleus_size"]) == {1}  # greedy keeps only the argmax
    result = invoke(
        "trace", "w4 w5", "--model", tiny_model_dir, "--heads", tiny_heads_dir, "--max-new-tokens", 3,
        "--json", tmp_path / "one.json", "--quiet",
    )
    data = json.loads((tmp_path / "one.json").read_text(encoding="utf-8"))
    assert data["prompt"] == "w4 w5" and len(data["temperature"]) == len(data["tokens"])


def test_unknown_compare_strategy_fails_listing_the_valid_ones(tiny_model_dir, tiny_heads_dir):
    result = invoke("trace", "w1", "--model", tiny_model_dir, "--heads", tiny_heads_dir, "--compare", "hot")
    assert result.exit_code == 2
    assert "scale:X" in result.output and "static:T,P" in result.output


def test_run_strategies_map_onto_decoding_settings():
    assert parse_run_strategy("scale:0.5").settings == {"temperature_scale": 0.5, "top_p_scale": 1.0}
    assert parse_run_strategy("greedy").settings == {"temperature_scale": 0.0}
    static = parse_run_strategy("static:0.7,0.9").settings
    assert static["use_temperature_head"] is False and static["use_top_p_head"] is False
    assert (static["temperature_scale"], static["top_p_scale"]) == (0.7, 0.9)
    with pytest.raises(ValueError, match="scale:X with a number"):
        parse_run_strategy("scale:hot")
    with pytest.raises(ValueError, match=">= 0"):
        parse_run_strategy("scale:-1")


def test_generate_show_prints_coloured_tokens_and_a_legend(tiny_model_dir, tiny_heads_dir):
    result = invoke(
        "generate", "w1 w2", "--model", tiny_model_dir, "--heads", tiny_heads_dir, "--max-new-tokens", 4, "--show",
    )
    assert result.exit_code == 0, result.output
    assert "temperature: 0 greedy" in result.output
    assert "4 tokens" in result.output or "tokens, T mean" in result.output
