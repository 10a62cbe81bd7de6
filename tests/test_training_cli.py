"""`deco train cache` and `deco train fit` in-process, on a tiny model saved to disk and a user JSONL."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("typer")

from conftest import make_tiny_model, make_tiny_tokenizer  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from deco_middleware import DecodingHeads  # noqa: E402
from deco_middleware.cli.app import app  # noqa: E402


def test_cache_then_fit_from_a_user_jsonl(tmp_path):
    model_dir = tmp_path / "tiny"
    make_tiny_model(seed=5).save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "mine.jsonl"
    lines = [{"prompt": f"w{i} w{i + 1}", "completion": f"w{i + 2} w{i + 3} w{i + 4}"} for i in range(0, 60, 3)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "cache", "--data", str(data), "--out", str(tmp_path / "cache"),
                                 "--model", str(model_dir), "--hidden-dtype", "float32"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["records_used"] == 20 and meta["completion_tokens"] == 20 * 4  # 3 words + end of turn
    result = runner.invoke(app, ["train", "fit", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "heads"),
                                 "--heads", "temperature", "--lr", "0.01", "--batch-tokens", "16", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    heads = DecodingHeads.from_pretrained(tmp_path / "heads")
    assert heads.trained_heads == ("temperature",)
    commands = heads.manifest.training["command"]
    assert commands["cache"].startswith("deco") and "fit" in commands["fit"]
    assert heads.manifest.training["data"]["source"].startswith("user JSONL")


def test_bad_jsonl_fails_with_the_line_and_exit_code_2(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "cache", "--data", str(data), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "line 2" in result.output


def test_cache_combines_files_and_keeps_only_the_listed_sources(tmp_path):
    model_dir = tmp_path / "tiny"
    make_tiny_model(seed=5).save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    main, wrong = tmp_path / "data.jsonl", tmp_path / "data.wrong.jsonl"
    main.write_text(json.dumps({"prompt": "w1", "completion": "w2 w3", "source": "sample"}) + "\n"
                    + json.dumps({"prompt": "w4", "completion": "w5", "source": "reference"}) + "\n", encoding="utf-8")
    wrong.write_text(json.dumps({"prompt": "w1", "completion": "w9 w9 w9", "source": "sample-wrong"}) + "\n",
                     encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "cache", "--data", str(main), "--data", str(wrong), "--out",
                                 str(tmp_path / "cache"), "--model", str(model_dir), "--sources", "sample,sample-wrong"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["hidden_dtype"] == "float32"
    assert meta["data_summary"]["records_by_source"] == {"sample": 1, "sample-wrong": 1}
    assert meta["completion_tokens"] == (2 + 1) + (3 + 1)  # words + end of turn, the reference dropped
    assert "--data" in meta["command"] and str(wrong) in meta["command"]
    assert meta["record_sources"] == ["sample", "sample-wrong"]
    # fit --sources trains on a subset of the cached records (here: only the wrong sample's 4 tokens).
    result = runner.invoke(app, ["train", "fit", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "heads"),
                                 "--sources", "sample-wrong", "--validation-fraction", "0", "--epochs", "1",
                                 "--recipe", "wrong samples only"])
    assert result.exit_code == 0, result.output
    record = DecodingHeads.from_pretrained(tmp_path / "heads").manifest.training
    assert record["data"]["train_tokens"] == 4 and record["hyperparameters"]["sources"] == ["sample-wrong"]
    assert record["recipe"] == "wrong samples only" and "--recipe" in record["command"]["fit"]
    result = runner.invoke(app, ["train", "fit", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "h2"),
                                 "--sources", "reference"])
    assert result.exit_code == 2 and "this cache holds ['sample', 'sample-wrong']" in " ".join(result.output.split())
    result = runner.invoke(app, ["train", "cache", "--data", str(main), "--out", str(tmp_path / "none"),
                                 "--model", str(model_dir), "--sources", "nothing"])
    assert result.exit_code == 2 and "--sources" in result.output


def test_source_selection_keeps_user_records_and_caps_records_per_prompt():
    from deco_middleware.cli.cmd_train import _select_sources

    records = [{"prompt": "a", "completion": c, "source": "sample-wrong"} for c in ("x", "y", "z")]
    records += [{"prompt": "a", "completion": "ok", "source": "sample"}, {"prompt": "b", "completion": "mine"}]
    kept = _select_sources(records, "sample-wrong", max_per_prompt="2")
    assert [r["completion"] for r in kept] == ["x", "y", "mine"]
    kept = _select_sources(records, None, max_per_prompt="sample-wrong=1")
    assert [r["completion"] for r in kept] == ["x", "ok", "mine"]
    with pytest.raises(typer.BadParameter, match="SOURCE=N"):
        _select_sources(records, None, max_per_prompt="sample-wrong=one")
    assert _select_sources(records, None) == records


def test_the_recorded_command_line_holds_options_only():
    """`deco train rollouts` / `outcome` used to record `--read-jsonl '<function ...>'`: names imported
    inside the command ended up in the `locals()` the command line is rebuilt from."""
    import json as json_module
    from pathlib import Path as P

    from deco_middleware.cli.cmd_train import _command_line

    line = _command_line("rollouts", {"out": P("r.jsonl"), "read_jsonl": json_module.loads, "RolloutConfig": dict,
                                      "json": json_module, "seed": 3, "resume": True, "tasks": None})
    assert line == "deco train rollouts --out r.jsonl --seed 3 --resume"


def test_rollouts_heads_without_scales_is_refused_with_the_fix(tmp_path):
    result = CliRunner().invoke(app, ["train", "rollouts", "--out", str(tmp_path / "r.jsonl"), "--heads",
                                      "smollm2-135m-instruct", "--tasks", "products"])
    assert result.exit_code == 2, result.output
    assert "head_scales" in result.output and "0.5" in result.output
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(("option", "value", "named"), [("--steer-phrasings", "many", "generated"),
                                                     ("--steer-placement", "end", "'user', 'system'")])
def test_rollouts_bad_steering_option_is_refused_before_any_draw(tmp_path, option, value, named):
    result = CliRunner().invoke(app, ["train", "rollouts", "--out", str(tmp_path / "r.jsonl"), "--tasks", "products",
                                      "--steer-pairs", "1", option, value])
    assert result.exit_code == 2, result.output
    assert f"'{value}'" in result.output and named in result.output
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(("option", "value", "named"), [("--phrasings", "train", "held-out, api"),
                                                     ("--placement", "assistant", "'user', 'system'")])
def test_steer_bad_option_is_refused_before_the_model_loads(tmp_path, option, value, named):
    # A model folder that does not exist: had the option been checked after loading, this would be the error.
    result = CliRunner().invoke(app, ["steer", "--task", "rg:products", "--out", str(tmp_path / "s"),
                                      "--model", str(tmp_path / "no-model"), option, value])
    assert result.exit_code == 2, result.output
    assert f"'{value}'" in result.output and named in result.output and "no-model" not in result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("stage", ["data", "cache", "fit", "rollouts", "outcome", "top-p"])
def test_every_recorded_option_is_an_option_of_the_command(stage):
    """The recorded command must replay: `train_top_p` was written `--no-train-top-p`, the flag is `--no-top-p`."""
    import inspect

    from deco_middleware.cli.cmd_train import _command_line

    group = typer.main.get_command(app).commands["train"]
    command = group.commands[stage]
    flags = {flag for p in command.params for flag in (*p.opts, *p.secondary_opts)}
    callback = inspect.signature(command.callback)
    for name, parameter in callback.parameters.items():
        samples = (True, False) if isinstance(parameter.default, bool) else ("x",)
        for value in samples:
            words = _command_line(stage, {name: value}).split()[3:]
            assert words and words[0] in flags, (stage, name, words)
