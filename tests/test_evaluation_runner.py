"""Evaluation harness on a tiny in-memory model: processors, determinism, resume, oracle, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deco_middleware.evaluation import load_task, parse_eval_strategy  # noqa: E402
from deco_middleware.evaluation.cache import ResultCache  # noqa: E402
from reference_processors import (  # noqa: E402
    EntropyTemperatureProcessor,
    PerRowSampler,
    StaticDecodingProcessor,
)
from deco_middleware.evaluation.runner import DecodingSummary, EvaluationRunner, select_oracle  # noqa: E402

PROMPTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10", "w11 w12 w13", "w14 w15"]


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "tiny.jsonl"
    # "contains" on word tokens: the tiny model sometimes says these words, so scores are not all 0.
    lines = [{"prompt": p, "answer": f"w{i * 7 % 20}", "match": "contains"} for i, p in enumerate(PROMPTS)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _runner(tiny_model, tiny_tokenizer, **kwargs):
    options = {"samples": 2, "max_new_tokens": 4, "batch_size": 4, "seed": 3}
    options.update(kwargs)
    return EvaluationRunner(tiny_model, tiny_tokenizer, **options)


# -- processors -----------------------------------------------------------------------------------


def test_baseline_processors_never_edit_scores_in_place():
    scores = torch.randn(3, 50)
    original = scores.clone()
    ids = torch.zeros(3, 1, dtype=torch.long)
    for processor in (StaticDecodingProcessor(0.5, 0.8, min_p=0.05), EntropyTemperatureProcessor(), PerRowSampler([1, 2, 3])):
        processor(ids, scores)
        assert torch.equal(scores, original), type(processor).__name__


def test_static_processor_matches_division_and_nucleus():
    scores = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    out = StaticDecodingProcessor(2.0, 0.7)(torch.zeros(1, 1, dtype=torch.long), scores)
    probs = torch.softmax(scores / 2.0, dim=-1)[0]
    assert probs[0] < 0.7 <= probs[0] + probs[1]  # so the nucleus is exactly the first two tokens
    torch.testing.assert_close(out[0, :2], scores[0, :2] / 2.0)
    assert out[0, 2:].isinf().all()
    with pytest.raises(ValueError, match="`temperature` has to be a strictly positive float, got 0"):
        StaticDecodingProcessor(0, 1.0)


def test_edt_temperature_follows_the_formula():
    torch.manual_seed(0)
    scores = torch.randn(4, 30) * torch.tensor([[0.1], [1.0], [3.0], [10.0]])
    edt = EntropyTemperatureProcessor(base_temperature=0.9, exponent_base=0.8, theta=0.5, min_temperature=1e-4)
    out = edt(torch.zeros(4, 1, dtype=torch.long), scores)
    probs = torch.softmax(scores, dim=-1)
    entropy = -torch.special.xlogy(probs, probs).sum(-1)  # 0 * log 0 = 0 for underflowed tokens
    expected = 0.9 * 0.8 ** (0.5 / entropy)
    torch.testing.assert_close(edt.applied[0], expected)
    torch.testing.assert_close(out, scores / expected[:, None])
    assert edt.applied[0][0] > edt.applied[0][3]  # flatter rows (higher entropy) get a higher temperature


def test_per_row_sampler_does_not_depend_on_the_other_rows():
    torch.manual_seed(0)
    scores = torch.randn(4, 200)
    together = PerRowSampler([11, 12, 13, 14])
    alone = PerRowSampler([13])
    ids = torch.zeros(4, 1, dtype=torch.long)
    for _ in range(5):
        picked = together(ids, scores).argmax(-1)
        assert picked[2] == alone(ids[2:3], scores[2:3]).argmax(-1)[0]


# -- runner ---------------------------------------------------------------------------------------


def test_same_seed_same_numbers_whatever_the_batch_size(tiny_model, tiny_tokenizer, task_file):
    task = load_task(str(task_file))
    decoding = parse_eval_strategy("static:1.5,1.0").decoding
    cache_a, cache_b = ResultCache(None), ResultCache(None)
    a = _runner(tiny_model, tiny_tokenizer, batch_size=3, cache=cache_a).run_decoding(task, decoding)
    b = _runner(tiny_model, tiny_tokenizer, batch_size=8, cache=cache_b).run_decoding(task, decoding)
    texts_a = [[s["text"] for s in r["samples"]] for r in cache_a._records.values()]
    texts_b = [[s["text"] for s in r["samples"]] for r in cache_b._records.values()]
    assert texts_a == texts_b
    assert a.to_dict() == b.to_dict()
    other_seed = ResultCache(None)
    _runner(tiny_model, tiny_tokenizer, seed=4, cache=other_seed).run_decoding(task, decoding)
    assert [[s["text"] for s in r["samples"]] for r in other_seed._records.values()] != texts_a


def test_summary_fields_and_applied_values(tiny_model, tiny_tokenizer, task_file, tiny_heads):
    task = load_task(str(task_file))
    runner = _runner(tiny_model, tiny_tokenizer, heads=tiny_heads)
    greedy = runner.run_strategy(task, parse_eval_strategy("greedy"))
    assert greedy.samples == 1 and greedy.pass_at_1 == greedy.pass_at_k
    assert (greedy.temperature_mean, greedy.top_p_mean) == (0.0, 1.0)
    static = runner.run_strategy(task, parse_eval_strategy("static:0.7,0.9"))
    assert static.samples == 2 and static.problems == len(PROMPTS)
    assert static.temperature_mean == pytest.approx(0.7) and static.temperature_std == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= static.pass_at_1 <= static.pass_at_k <= 1.0
    assert 1 <= static.mean_length <= 4
    edt = runner.run_strategy(task, parse_eval_strategy("edt"))
    assert 0.0 < edt.temperature_mean <= 1.0 and edt.top_p_mean == 1.0
    autodeco = runner.run_strategy(task, parse_eval_strategy("autodeco"))
    assert 0.0 < autodeco.temperature_mean < 2.0 and 0.0 < autodeco.top_p_mean < 1.0 and autodeco.temperature_std > 0
    only_t = runner.run_strategy(task, parse_eval_strategy("autodeco-t"))
    assert only_t.top_p_mean == 1.0 and only_t.top_p_std == pytest.approx(0.0, abs=1e-6)
    only_p = runner.run_strategy(task, parse_eval_strategy("autodeco-p"))
    assert only_p.temperature_mean == 1.0 and only_p.top_p_mean < 1.0
    mean_static = runner.run_strategy(task, parse_eval_strategy("mean-static"))
    chosen = mean_static.extra["chosen"]
    assert chosen["temperature"] == round(autodeco.temperature_mean, 3)
    assert chosen["top_p"] == round(autodeco.top_p_mean, 3)
    assert mean_static.temperature_mean == pytest.approx(chosen["temperature"])
    # mean-static@S: the heads' mean at temperature scale S (the comparison for autodeco@S)
    scaled = runner.run_strategy(task, parse_eval_strategy("autodeco@0.5"))
    half = runner.run_strategy(task, parse_eval_strategy("mean-static@0.5"))
    assert half.extra["chosen"] == {"temperature": round(scaled.temperature_mean, 3),
                                    "top_p": round(scaled.top_p_mean, 3), "from": "autodeco@0.5"}
    assert half.temperature_mean == pytest.approx(round(scaled.temperature_mean, 3))
    assert half.temperature_mean == pytest.approx(chosen["temperature"] / 2, abs=0.02)


def test_learned_strategies_without_heads_name_the_fix(tiny_model, tiny_tokenizer, task_file):
    task = load_task(str(task_file))
    with pytest.raises(ValueError, match="needs trained heads; pass --heads"):
        _runner(tiny_model, tiny_tokenizer).run_strategy(task, parse_eval_strategy("mean-static"))


def test_interrupted_run_resumes_without_redoing_work(tiny_model, tiny_tokenizer, task_file, tmp_path, monkeypatch):
    task = load_task(str(task_file))
    decoding = parse_eval_strategy("default").decoding
    reference = _runner(tiny_model, tiny_tokenizer, batch_size=2).run_decoding(task, decoding)

    cache_path = tmp_path / "cache.jsonl"
    from deco_middleware.engine import _Stepper

    real_prefill = _Stepper.prefill
    calls = []

    def interrupted(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_prefill(self, *args, **kwargs)

    monkeypatch.setattr(_Stepper, "prefill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _runner(tiny_model, tiny_tokenizer, batch_size=2, cache=ResultCache(cache_path)).run_decoding(task, decoding)
    # batch_size 2 with 2 samples: one problem per group (one prefill each), so two problems were finished.
    assert len(cache_path.read_text().splitlines()) == 2
    with cache_path.open("a") as handle:
        handle.write('{"run": "half-written')  # a writer killed mid-line

    resumed_calls = []

    def counting(self, *args, **kwargs):
        resumed_calls.append(1)
        return real_prefill(self, *args, **kwargs)

    monkeypatch.setattr(_Stepper, "prefill", counting)
    cache = ResultCache(cache_path)
    assert len(cache) == 2 and cache.ignored_lines == 1
    resumed = _runner(tiny_model, tiny_tokenizer, batch_size=2, cache=cache).run_decoding(task, decoding)
    assert len(resumed_calls) == len(PROMPTS) - 2
    assert resumed.to_dict() == reference.to_dict()
    assert len(ResultCache(cache_path)) == len(PROMPTS)  # the glued-on record after the broken line is readable

    again = []
    monkeypatch.setattr(_Stepper, "prefill", lambda *a, **k: again.append(1))
    _runner(tiny_model, tiny_tokenizer, batch_size=2, cache=ResultCache(cache_path)).run_decoding(task, decoding)
    assert again == []  # everything came from the cache


# -- oracle ---------------------------------------------------------------------------------------


def _summary(value: float) -> DecodingSummary:
    return DecodingSummary("x", 1, 1, value, 0.0, value, 1.0, 0.0, 0.0, 1.0, 0.0)


def test_oracle_follows_the_two_stage_grid_with_a_planted_best():
    calls = []

    def planted(temperature: float, top_p: float) -> DecodingSummary:
        calls.append((temperature, top_p))
        # Best T at P=1 is 0.6; at T=0.6 the best P is 0.85, and a point off the searched path (T=1.2,
        # P=0.6) scores higher still but must not be visited: the oracle is T first, then P.
        score = 1.0 - abs(temperature - 0.6) - abs(top_p - 0.85) / 2
        if (temperature, top_p) == (1.2, 0.6):
            score = 2.0
        return _summary(score)

    best = select_oracle(planted)
    assert best.extra["chosen"] == {"temperature": 0.6, "top_p": 0.85}
    assert calls[:15] == [(round(0.1 * i, 2), 1.0) for i in range(1, 16)]
    assert calls[15:] == [(0.6, round(0.5 + 0.05 * i, 2)) for i in range(11)]
    assert len(best.extra["grid"]) == 26 - 1  # (0.6, 1.0) is visited twice but is one grid point
    with pytest.raises(ValueError, match="at least one temperature"):
        select_oracle(planted, temperatures=())


def _planted_task(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """A task whose answer is each prompt's greedy first token: the coldest setting is the best.

    All six prompts: at T=1.5 the tiny model still gives its greedy token with probability 0.12-0.92,
    so a hot setting solving every problem by chance (a tie that the grid order would break towards
    it) has probability ~0.001. The task is loaded by a relative name so that the per-sample seeds,
    derived from the task's name, do not change with pytest's temporary directory.
    """
    inputs = tiny_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    greedy = tiny_model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=3)[:, -1]
    monkeypatch.chdir(tmp_path)
    Path("planted.jsonl").write_text("".join(
        json.dumps({"prompt": p, "answer": tiny_tokenizer.decode([int(t)]), "match": "exact"}) + "\n"
        for p, t in zip(PROMPTS, greedy)
    ))
    return load_task("planted.jsonl")


def test_oracle_on_a_tiny_model_picks_the_planted_setting(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    # Plant: the right answer is each prompt's greedy token, so the coldest T and a nucleus that keeps
    # only the argmax are the best setting; hot sampling loses it.
    task = _planted_task(tiny_model, tiny_tokenizer, tmp_path, monkeypatch)
    runner = _runner(tiny_model, tiny_tokenizer, samples=4, max_new_tokens=1, oracle_temperatures=(1.5, 0.1, 1.0),
                     oracle_top_ps=(1.0, 0.5))
    oracle = runner.run_strategy(task, parse_eval_strategy("oracle"))
    assert oracle.extra["chosen"]["temperature"] == 0.1
    assert oracle.pass_at_1 == 1.0
    assert runner.run_strategy(task, parse_eval_strategy("static:1.5,1.0")).pass_at_1 < 1.0


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_eval_writes_json_markdown_and_resumes(tiny_model, tiny_tokenizer, tiny_heads_dir, task_file, tmp_path,
                                                    monkeypatch):
    from typer.testing import CliRunner

    import deco_middleware.default_model as dm
    from deco_middleware.cli.app import app

    monkeypatch.setattr(dm, "load_model", lambda name="default", dtype=None: (tiny_model, tiny_tokenizer))
    out, md, cache = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "c.jsonl"
    arguments = ["eval", "--task", str(task_file), "--strategy", "greedy", "--strategy", "autodeco", "--strategy",
                 "mean-static", "--samples", "2", "--max-new-tokens", "3", "--heads", str(tiny_heads_dir),
                 "--json", str(out), "--markdown", str(md), "--cache", str(cache), "--compare-to", "greedy", "--group", "g=tiny.jsonl"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    entries = document["results"][str(task_file)]
    assert list(entries) == ["greedy", "autodeco", "mean-static"]
    for entry in entries.values():
        assert 0.0 <= entry["pass@1"] <= 1.0 and entry["stderr"] >= 0 and 0.0 <= entry["pass@k"] <= 1.0
        assert entry["problems"] == len(PROMPTS)
    assert entries["mean-static"]["chosen"]["temperature"] == round(entries["autodeco"]["temperature"]["mean"], 3)
    assert document["config"]["samples"] == 2 and document["config"]["tokens_per_second"] > 0
    assert "| mean-static (T=" in md.read_text()
    differences = document["differences"]["greedy"]["tasks"][str(task_file)]
    assert sorted(differences) == ["autodeco", "mean-static"]
    shift = differences["autodeco"]
    assert shift["pass@1"] == pytest.approx(entries["autodeco"]["pass@1"] - entries["greedy"]["pass@1"])
    assert shift["pass@1_low"] <= shift["pass@1"] <= shift["pass@1_high"]
    assert "**pass@1 minus `greedy`'s**" in md.read_text() and "| mean | g mean |" in md.read_text()
    grouped = document["differences"]["greedy"]["mean_over_groups"]["g"]["autodeco"]
    assert grouped["pass@1"] == pytest.approx(shift["pass@1"])

    from deco_middleware.engine import _Stepper

    monkeypatch.setattr(_Stepper, "prefill", lambda *a, **k: pytest.fail("resumed run generated again"))
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["results"] == document["results"]


def test_cli_eval_errors_name_the_bad_value(tmp_path):
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app

    good_file = tmp_path / "good.jsonl"
    good_file.write_text('{"prompt": "p", "answer": "1"}\n')
    bad_group = CliRunner().invoke(app, ["eval", "--task", str(good_file), "--strategy", "greedy", "--group", "in=gcd"])
    assert bad_group.exit_code == 2
    assert "--group 'in=gcd': write NAME=TASK,TASK with this run's task names (good.jsonl); unknown: gcd" in " ".join(
        bad_group.output.split())
    bad_baseline = CliRunner().invoke(app, ["eval", "--task", "x.jsonl", "--strategy", "greedy", "--compare-to", "oracle"])
    assert bad_baseline.exit_code == 2
    assert "--compare-to 'oracle' is not a strategy of this run; name one of: greedy" in " ".join(bad_baseline.output.split())
    bad_strategy = CliRunner().invoke(app, ["eval", "--task", "x.jsonl", "--strategy", "hot"])
    assert bad_strategy.exit_code == 2
    assert "Unknown strategy 'hot'; valid: greedy, default" in " ".join(bad_strategy.output.split())
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"prompt": "p", "answer": "1"}\n{"prompt": 3}\n')
    bad_task = CliRunner().invoke(app, ["eval", "--task", str(bad_file), "--strategy", "greedy"])
    assert bad_task.exit_code == 2
    message = " ".join(bad_task.output.split())  # rich wraps long lines
    assert "bad.jsonl, line 2" in message and '"prompt" must be a string, got int 3' in message
    bad_grid = CliRunner().invoke(app, ["eval", "--task", str(bad_file), "--strategy", "oracle", "--oracle-top-ps", "0.5,1.5"])
    assert bad_grid.exit_code == 2
    assert "--oracle-top-ps '0.5,1.5': every value must be in (0, 1.0]" in " ".join(bad_grid.output.split())


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from deco_middleware.evaluation.report import write_plot

    document = {"results": {"t1": {"greedy": _summary(0.5).to_dict(), "default": _summary(0.25).to_dict()}}, "config": {}}
    path = write_plot(document, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cache_key_separates_dtypes(tiny_model, tiny_tokenizer):
    import copy

    decoding = parse_eval_strategy("default").decoding
    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    assert _runner(tiny_model, tiny_tokenizer)._run_key(decoding) != _runner(half, tiny_tokenizer)._run_key(decoding)
    assert _runner(tiny_model, tiny_tokenizer)._run_key(decoding) == _runner(tiny_model, tiny_tokenizer)._run_key(decoding)


def test_oracle_can_search_with_fewer_samples_then_reports_the_full_run(tiny_model, tiny_tokenizer, tmp_path,
                                                                        monkeypatch):
    task = _planted_task(tiny_model, tiny_tokenizer, tmp_path, monkeypatch)
    runner = _runner(tiny_model, tiny_tokenizer, samples=4, max_new_tokens=1, oracle_temperatures=(1.5, 0.1),
                     oracle_top_ps=(1.0, 0.5), oracle_samples=1)
    oracle = runner.run_strategy(task, parse_eval_strategy("oracle"))
    assert oracle.extra["chosen"]["temperature"] == 0.1 and oracle.extra["searched_with_samples"] == 1
    assert oracle.samples == 4 and oracle.problems == len(PROMPTS)  # the reported run uses every sample
    assert set(oracle.extra["grid"]) == {"T=1.5,P=1", "T=0.1,P=1", "T=0.1,P=0.5"}
    with pytest.raises(ValueError, match="`oracle_samples` has to be a positive integer, got 0"):
        _runner(tiny_model, tiny_tokenizer, oracle_samples=0)


def test_cli_batch_size_default_is_the_runner_default():
    """`deco eval`'s --batch-size default is the one the published throughput was measured at."""
    import inspect

    from deco_middleware.cli.cmd_eval import evaluate
    from deco_middleware.evaluation.runner import DEFAULT_BATCH_SIZE

    assert inspect.signature(evaluate).parameters["batch_size"].default == DEFAULT_BATCH_SIZE == 256


def test_steer_report_places_the_instruction_where_asked(tiny_model, tiny_tokenizer, tiny_heads, task_file):
    """``placement="system"`` reaches the model: the same completions read under the instruction in the
    system message give other temperatures than under the user-turn one; the neutral rows are the same."""
    import copy

    from deco_middleware.evaluation.steer import run_steer

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}{% if add_generation_prompt %}w0{% endif %}"
    task = load_task(str(task_file))
    reports = {placement: run_steer(tiny_model, tokenizer, tiny_heads, [task], samples=2, max_new_tokens=4, seed=3,
                                    batch_size=4, placement=placement) for placement in ("user", "system")}
    assert reports["system"]["settings"]["placement"] == "system"
    user, system = reports["user"]["overall"], reports["system"]["overall"]
    assert system["none"] == user["none"]
    assert system["dT_fixed_low"] != user["dT_fixed_low"] and system["dT_fixed_high"] != user["dT_fixed_high"]


def test_steer_report_teacher_forces_the_neutral_completions_under_every_prompt(tiny_model, tiny_tokenizer, tiny_heads,
                                                                                 task_file):
    """The neutral completions forced under the neutral prompt give back the T applied while generating them
    (so the fixed-completion dT measures the prompt alone); the instructed ones are reported next to it."""
    from deco_middleware.evaluation.steer import forced_temperatures, run_steer, steer_markdown

    task = load_task(str(task_file))
    report = run_steer(tiny_model, tiny_tokenizer, tiny_heads, [task], samples=2, max_new_tokens=5, seed=3, batch_size=4)
    overall = report["overall"]
    for key in ("dT_fixed_low", "dT_fixed_high", "consistency_fixed_low", "consistency_fixed_high"):
        assert key in overall and math.isfinite(overall[key])
    assert all("dT_fixed" in s for s in report["phrasings"].values())
    assert "teacher-forced" in steer_markdown(report)
    # The check behind it: generation's applied T equals the forced T on the same tokens.
    from deco_middleware.engine import Learned, sample

    prompt = task.problems[0].prompt
    completions = sample(tiny_model, tiny_tokenizer, [prompt], policy=Learned(tiny_heads), samples=2, seed=5,
                         max_new_tokens=5)[0]
    forced = forced_temperatures(tiny_model, tiny_tokenizer, tiny_heads, prompt, [c.token_ids for c in completions])
    for completion, mean_t in zip(completions, forced):
        assert mean_t == pytest.approx(float(np.mean(completion.temperatures)), abs=1e-4)
