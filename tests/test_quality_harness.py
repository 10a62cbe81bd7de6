"""deco eval's quality measurements: maj@k, frontier gain with its paired bootstrap, the sweep and the
tuned strategies' names, the dev split, and the one grader shared with training."""

from __future__ import annotations

import math

import pytest

from deco_middleware.evaluation.extraction import answer_key, grade_with_scorer
from deco_middleware.evaluation.frontier import (
    curve_temperature,
    frontier_gain,
    frontier_table,
    static_pass_at_1,
)
from deco_middleware.evaluation.metrics import majority_correct
from deco_middleware.evaluation.strategies import (
    SWEEP_STRATEGIES,
    TUNED_BASELINES,
    expand_strategy_names,
    parse_eval_strategy,
)
from deco_middleware.evaluation.errors import UnknownStrategyError
from deco_middleware.evaluation.tuning import pick_best, select_dev_static


# -- maj@k --------------------------------------------------------------------------------------------


def test_majority_vote_counts_answers_and_breaks_ties_by_first_occurrence():
    assert majority_correct(["12", "7", "12", "9"], [True, False, True, False])
    assert not majority_correct(["7", "12", "7", "12"], [False, True, False, True])  # tie: "7" came first
    assert majority_correct(["12", "7", "7", "12"], [True, False, False, True])  # tie: "12" came first
    assert majority_correct([None, None, "5", None], [False, False, True, False])  # no answer does not vote
    assert not majority_correct([None, None], [False, False])
    with pytest.raises(ValueError, match="one correctness flag per answer"):
        majority_correct(["1"], [True, False])


def test_summaries_report_maj_at_k_from_the_tasks_own_normalisation():
    pytest.importorskip("torch")
    from deco_middleware.evaluation.runner import summarize

    def record(texts, scores):
        return {"samples": [{"text": t, "score": s, "length": 3, "temperature_sums": [1.0, 1.0],
                             "top_p_sums": [1.0, 1.0]} for t, s in zip(texts, scores)]}

    records = [
        record(["so 12.", "It is 12", "7", "no idea"], [1.0, 1.0, 0.0, 0.0]),  # "12" x2 wins: right
        record(["8", "9", "9", "8"], [0.0, 1.0, 1.0, 0.0]),  # tie 8/9, "8" first: wrong
        record(["3,000", "3000", "5", "4"], [1.0, 1.0, 0.0, 0.0]),  # 3,000 == 3000
    ]
    keys = [lambda text: answer_key(text, "12"), lambda text: answer_key(text, "9"), lambda text: answer_key(text, "3000")]
    summary = summarize("static:T=0.7,P=1", records, keys)
    assert summary.maj_at_k == pytest.approx(2 / 3)
    assert summary.pass_at_1 == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert [p[2] for p in summary.per_problem] == [1.0, 0.0, 1.0]
    assert summary.to_dict()["maj@k"] == pytest.approx(2 / 3)


# -- frontier gain ------------------------------------------------------------------------------------


CURVE = [(0.50, 0.50), (0.60, 0.48), (0.70, 0.40), (0.80, 0.30)]  # (pass@k, pass@1) in order of T


def test_static_curve_is_interpolated_linearly_and_flat_beyond_its_ends():
    assert static_pass_at_1(CURVE, 0.65) == pytest.approx(0.44)
    assert static_pass_at_1(CURVE, 0.60) == pytest.approx(0.48)
    assert static_pass_at_1(CURVE, 0.90) == pytest.approx(0.30)  # beyond the most diverse point
    assert static_pass_at_1(CURVE, 0.40) == pytest.approx(0.50)  # below greedy's pass@k
    assert frontier_gain(0.47, 0.65, CURVE) == pytest.approx(0.03)
    assert frontier_gain(0.40, 0.65, CURVE) == pytest.approx(-0.04)


def test_a_curve_that_folds_back_counts_its_highest_segment():
    folded = [(0.5, 0.5), (0.7, 0.45), (0.6, 0.30)]  # the last point has less pass@k than the one before
    assert static_pass_at_1(folded, 0.65) == pytest.approx(max(0.4625, 0.375))


def test_curve_temperatures_are_greedy_and_the_sweep_at_p1():
    assert curve_temperature("greedy") == 0.0
    assert curve_temperature("static:T=0.3,P=1") == 0.3
    assert curve_temperature("static:T=0.3,P=0.9") is None
    assert curve_temperature("static:T=0.4,P=1") is None  # not a sweep temperature
    assert curve_temperature("autodeco@0.5") is None


class _Summary:
    """The two fields frontier_table reads, built by hand."""

    def __init__(self, decoding, rows, samples=4):
        self.decoding, self.samples = decoding, samples
        self.per_problem = [(p1, pk, math.nan) for p1, pk in rows]


def _hand_results():
    n = 40
    greedy = [(1.0, 1.0)] * 20 + [(0.0, 0.0)] * 20  # 50 / 50
    hot = [(0.5, 1.0)] * 24 + [(0.25, 0.0)] * 16  # pass@1 0.4, pass@k 0.6
    # A strategy above the curve: at pass@k 0.6 the curve gives 0.4; it has 0.5.
    heads = [(0.75, 1.0)] * 16 + [(0.5, 1.0)] * 8 + [(0.25, 0.0)] * 16
    assert len(greedy) == len(hot) == len(heads) == n
    return {"task": {
        "greedy": _Summary("greedy", greedy, samples=1),
        "static:0.7,1": _Summary("static:T=0.7,P=1", hot),
        "autodeco": _Summary("autodeco", heads),
    }}


def test_frontier_table_gives_the_hand_computed_gain_and_a_seeded_interval():
    table = frontier_table(_hand_results(), resamples=500, seed=3)
    entry = table["tasks"]["task"]["autodeco"]
    assert entry["gain"] == pytest.approx(0.5 - 0.4)
    assert entry["low"] <= entry["gain"] <= entry["high"]
    assert entry["low"] > 0  # every problem moves both curves alike: the paired interval stays above 0
    assert table["static_curve"]["task"] == ["greedy", "static:T=0.7,P=1"]
    assert table["mean_over_tasks"]["autodeco"]["gain"] == pytest.approx(0.1)
    again = frontier_table(_hand_results(), resamples=500, seed=3)
    assert again == table  # the bootstrap is seeded
    other = frontier_table(_hand_results(), resamples=500, seed=4)
    assert other["tasks"]["task"]["autodeco"]["low"] != entry["low"]


def test_paired_differences_give_the_hand_computed_shift_and_a_seeded_paired_interval():
    from deco_middleware.evaluation.frontier import paired_differences

    table = paired_differences(_hand_results(), "static:0.7,1", resamples=500, seed=3)
    heads = table["tasks"]["task"]["autodeco"]
    # heads - hot, problem by problem: +0.25 on 16, 0 on 24 (pass@k equal on every problem).
    assert heads["pass@1"] == pytest.approx(0.5 - 0.4) and heads["pass@k"] == pytest.approx(0.0)
    assert 0 < heads["pass@1_low"] <= heads["pass@1"] <= heads["pass@1_high"]
    greedy = table["tasks"]["task"]["greedy"]
    assert greedy["pass@1"] == pytest.approx(0.5 - 0.4)
    assert greedy["pass@1_low"] < 0 < greedy["pass@1_high"]  # 20 right, 20 wrong against 0.5 / 0.25: noisy
    assert table["mean_over_tasks"]["autodeco"]["pass@1"] == pytest.approx(0.1)
    assert "static:0.7,1" not in table["tasks"]["task"]
    assert paired_differences(_hand_results(), "static:0.7,1", resamples=500, seed=3) == table
    assert paired_differences(_hand_results(), "oracle") is None


def test_group_means_average_the_groups_tasks_with_their_own_resamples():
    from deco_middleware.evaluation.frontier import paired_differences

    results = {"a": _hand_results()["task"], "b": _hand_results()["task"]}
    shifted = dict(results["b"])
    shifted["autodeco"] = _Summary("autodeco", [(0.5, 1.0)] * 24 + [(0.25, 0.0)] * 16)  # = hot: gain 0
    results["b"] = shifted
    groups = {"first": ["a"], "both": ["a", "b"]}
    table = frontier_table(results, resamples=300, seed=3, groups=groups)
    assert table["mean_over_groups"]["first"]["autodeco"]["gain"] == pytest.approx(0.1)
    assert table["mean_over_groups"]["both"]["autodeco"]["gain"] == pytest.approx(0.05)
    assert table["mean_over_groups"]["both"]["autodeco"] == {**table["mean_over_tasks"]["autodeco"]}
    differences = paired_differences(results, "static:0.7,1", resamples=300, seed=3, groups=groups)
    assert differences["mean_over_groups"]["first"]["autodeco"]["pass@1"] == pytest.approx(0.1)
    assert differences["mean_over_groups"]["both"]["autodeco"]["pass@1"] == pytest.approx(0.05)
    assert differences["mean_over_groups"]["first"]["autodeco"]["pass@1_low"] > 0


def test_frontier_table_needs_two_curve_points():
    results = _hand_results()
    del results["task"]["static:0.7,1"]
    assert frontier_table(results) is None


# -- strategy names -----------------------------------------------------------------------------------


def test_sweep_and_tuned_names_expand_in_order_without_duplicates():
    names = expand_strategy_names(["greedy", "tuned-baselines"], sweep=True)
    assert names[0] == "greedy" and names.count("greedy") == 1
    assert names[1 : 1 + len(TUNED_BASELINES)] == list(TUNED_BASELINES)
    assert set(SWEEP_STRATEGIES) <= set(names)
    assert [n for n in SWEEP_STRATEGIES if n.startswith("autodeco@")] == [
        "autodeco@0.25", "autodeco@0.5", "autodeco@0.75", "autodeco@1", "autodeco@1.5", "autodeco@2"]


def test_heads_at_a_scale_share_autodecos_cache_at_scale_one():
    assert parse_eval_strategy("autodeco@1").decoding.key == "autodeco"
    assert parse_eval_strategy("autodeco@0.5").decoding.key == "autodeco@0.5"
    assert parse_eval_strategy("scale:0.5").decoding.key == "autodeco@0.5"
    assert parse_eval_strategy("autodeco@0.5").needs_heads
    # The one vocabulary: scale 0 is greedy through the heads (as temperature_scale=0 everywhere).
    assert parse_eval_strategy("autodeco@0").decoding.temperature_scale == 0.0
    with pytest.raises(UnknownStrategyError, match="must be >= 0"):
        parse_eval_strategy("autodeco@-1")


def test_baselines_and_tuned_strategies_parse():
    assert parse_eval_strategy("p-less:0.7").decoding.key == "p-less:0.7"
    assert parse_eval_strategy("min-p:0.1").decoding.key == "static:T=1,P=1,min_p=0.1"  # unchanged key
    assert parse_eval_strategy("min-p:0.1,0.7").decoding.temperature == 0.7
    assert parse_eval_strategy("dev:edt").needs_heads and parse_eval_strategy("dev:edt").tuned
    assert parse_eval_strategy("dev-static").tuned and not parse_eval_strategy("dev-static").needs_heads
    with pytest.raises(UnknownStrategyError, match="tuned families are"):
        parse_eval_strategy("dev:nucleus")
    with pytest.raises(UnknownStrategyError, match="top-n-sigma:N,T"):
        parse_eval_strategy("top-n-sigma:1")


# -- dev tuning ---------------------------------------------------------------------------------------


def test_pick_best_keeps_the_earliest_of_equal_scores():
    from deco_middleware.strategies import parse_strategy

    grid = [parse_strategy(f"static:{t},1") for t in (0.1, 0.3, 0.5)]
    scores = {0.1: 0.4, 0.3: 0.5, 0.5: 0.5}
    best, seen = pick_best(grid, lambda d: scores[d.temperature])
    assert best.temperature == 0.3 and list(seen) == [d.key for d in grid]


def test_dev_static_searches_t_at_p1_then_p():
    asked = []

    def score(decoding):
        asked.append(decoding.key)
        return {0.3: 0.6}.get(decoding.temperature, 0.1) + (0.05 if decoding.top_p == 0.95 else 0.0)

    best, scores = select_dev_static(score)
    assert (best.temperature, best.top_p) == (0.3, 0.95)
    assert len(set(asked)) == 6  # the budget every tuned family gets


def test_the_dev_split_never_holds_an_evaluation_prompt():
    pytest.importorskip("torch")
    pytest.importorskip("reasoning_gym")
    from deco_middleware.evaluation.runner import EvaluationRunner
    from deco_middleware.evaluation.tasks import load_task

    evaluation = load_task("rg:products?min_terms=2&max_terms=2&min_digits=1&max_digits=1", limit=50)
    runner = EvaluationRunner.__new__(EvaluationRunner)  # only the dev-split part: no model needed
    runner.dev_problems, runner._dev_tasks = 40, None
    runner.evaluation_prompts = {p.prompt for p in evaluation.problems}
    dev = runner.dev_tasks()
    assert [t.spec for t in dev] == ["dev:products?seed=5151", "dev:basic_arithmetic?seed=5151", "dev:chain_sum?seed=5151"]
    assert all(len(t) == 40 for t in dev)
    prompts = [p.prompt for t in dev for p in t.problems]
    assert not set(prompts) & runner.evaluation_prompts and len(set(prompts)) == len(prompts)


# -- one grader ---------------------------------------------------------------------------------------


def test_training_and_evaluation_grade_with_the_same_rule():
    reasoning_gym = pytest.importorskip("reasoning_gym")
    from deco_middleware.training.data import make_problems
    from deco_middleware.training.grading import grade_reply

    problems, dataset = make_problems("products", 5, seed=11)
    replies = ["{a}", "The answer is {a}.", "{a} is wrong, it is 1000", "<answer>{a}</answer> and 3", "no number"]
    for problem in problems:
        for reply in (r.format(a=problem.answer) for r in replies):
            assert problem.grade(reply) == grade_reply(reply, problem.entry, dataset.score_answer)
            assert problem.grade(reply) == grade_with_scorer(reply, problem.entry, dataset.score_answer)
    first = problems[0]
    assert first.grade(f"{first.answer} is wrong, it is 1000") == 0.0  # the last number counts, not any
    assert first.task == "products" and first.entry["answer"] == first.answer
    assert reasoning_gym is not None


def test_answer_key_normalises_like_the_grader():
    assert answer_key("3 * 4 = 12.", "12") == "12"
    assert answer_key("1,234", "1234") == "1234"
    assert answer_key("<answer>2.50</answer> or 7", "2.5") == "2.5"
    assert answer_key("no idea", "12") is None
    assert answer_key("  Hello World! ", "hello world") == "hello world"
    assert answer_key("", "abc") is None
