"""Evaluation harness, model-free parts: extraction, scorers, pass@k, task specs, strategy names."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from deco_middleware.evaluation import (
    STRATEGY_NAMES,
    TaskSpecError,
    UnknownStrategyError,
    extract_number,
    load_task,
    normalize_text,
    parse_eval_strategy,
    pass_at_k,
    score_completion,
)
from deco_middleware.evaluation.extraction import candidate_answer, parse_number
from deco_middleware.evaluation.metrics import RunningMoments, mean_and_stderr
from deco_middleware.evaluation.tasks import parse_reasoning_gym_spec


# -- extraction and scorers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("1 * 6 = 6", 6.0),  # the question restated first: the last number is the answer
        ("The final answer to this arithmetic problem is 13.", 13.0),
        ("Calculate: 4 - -8 = 12", 12.0),
        ("-10", -10.0),
        ("9 - 4", 4.0),  # a spaced minus is an operator, not a sign
        ("3-4", 4.0),
        ("It costs 1,234 dollars", 1234.0),
        ("pi is about 3.14.", 3.14),
        ("<answer>42</answer> and later 7", 42.0),  # the answer tag wins over the last number
        ("<ANSWER> 5 ", 5.0),  # an unclosed tag still delimits the answer
        ("no digits here", None),
        ("w12", None),  # digits inside a word are not a number
    ],
)
def test_extract_number(completion, expected):
    assert extract_number(completion) == expected


def test_parse_number_only_accepts_a_whole_number():
    assert parse_number(" -2.5 ") == -2.5
    assert parse_number("1,000") == 1000.0
    assert parse_number("12 apples") is None
    assert parse_number("") is None


def test_normalize_text_is_case_and_whitespace_insensitive():
    assert normalize_text("  Hello\n  World. ") == "hello world"
    assert normalize_text('"Paris"') == "paris"


@pytest.mark.parametrize(
    ("completion", "answer", "match", "expected"),
    [
        ("So 3 * 4 = 12.", "12", "number", 1.0),
        ("So 3 * 4 = 12.", "12.0", "number", 1.0),
        ("So 3 * 4 = 13.", "12", "number", 0.0),
        ("nothing", "12", "number", 0.0),
        ("  PARIS  ", "Paris", "exact", 1.0),
        ("The capital is Paris", "Paris", "exact", 0.0),
        ("The capital is   PARIS!", "paris", "contains", 1.0),
        ("<answer>Paris</answer> not Rome", "rome", "contains", 0.0),
    ],
)
def test_score_completion(completion, answer, match, expected):
    assert score_completion(completion, answer, match) == expected


def test_score_completion_refuses_bad_rules():
    with pytest.raises(ValueError, match="Unknown match rule 'fuzzy'; valid: number, exact, contains"):
        score_completion("x", "x", "fuzzy")
    with pytest.raises(ValueError, match="match='number' needs a numeric answer, got 'abc'"):
        score_completion("x", "abc", "number")


def test_candidate_answer_for_reasoning_gym():
    assert candidate_answer("8 * 5 = 40.", "40") == "40"
    assert candidate_answer("about -2.5", "-2.5") == "-2.5"
    assert candidate_answer("<answer> olleh </answer>", "olleh") == "olleh"


# -- pass@k ---------------------------------------------------------------------------------------


def _pass_at_k_brute_force(n: int, c: int, k: int) -> float:
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_mean_stderr_and_moments():
    mean, stderr = mean_and_stderr([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and stderr == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))
    assert mean_and_stderr([0.25]) == (0.25, 0.0)
    moments = RunningMoments()
    moments.add_sums(2, 1.0 + 3.0, 1.0 + 9.0)
    assert (moments.mean, moments.std) == (2.0, 1.0)


# -- task specs -----------------------------------------------------------------------------------


def test_reasoning_gym_spec_values():
    name, options = parse_reasoning_gym_spec("rg:basic_arithmetic?min_terms=2&operators=+,-&seed=7&x=0.5&flag=true&w=abc")
    assert name == "basic_arithmetic"
    assert options == {"min_terms": 2, "operators": ("+", "-"), "seed": 7, "x": 0.5, "flag": True, "w": "abc"}
    with pytest.raises(TaskSpecError, match="'oops' is not key=value"):
        parse_reasoning_gym_spec("rg:products?oops")


def test_reasoning_gym_task_is_deduplicated_and_graded_by_its_own_scorer():
    pytest.importorskip("reasoning_gym")
    task = load_task("rg:products?min_terms=2&max_terms=2&min_digits=1&max_digits=1", limit=20)
    assert len(task) == 20
    assert len({p.prompt for p in task.problems}) == 20
    problem = task.problems[0]
    assert problem.grade(f"The answer is {problem.answer}.") == 1.0
    assert problem.grade(f"The answer is {int(problem.answer) + 1}.") < 1.0
    again = load_task("rg:products?min_terms=2&max_terms=2&min_digits=1&max_digits=1", limit=20)
    assert [p.prompt for p in again.problems] == [p.prompt for p in task.problems]  # same seed, same problems
    other_seed = load_task("rg:products?min_terms=2&max_terms=2&min_digits=1&max_digits=1&seed=1", limit=20)
    assert [p.prompt for p in other_seed.problems] != [p.prompt for p in task.problems]


def test_unknown_reasoning_gym_dataset_names_it():
    pytest.importorskip("reasoning_gym")
    with pytest.raises(TaskSpecError, match="'no_such_dataset'"):
        load_task("rg:no_such_dataset", limit=2)


def test_jsonl_task_and_default_match(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [
        {"prompt": "2+2?", "answer": "4", "source": "ignored"},
        {"prompt": "Capital of France?", "answer": "Paris"},
        {"prompt": "Say hi", "answer": "hi", "match": "contains"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    task = load_task(str(path))
    assert [p.id for p in task.problems] == ["1", "2", "4"]  # ids are line numbers; the blank line is skipped
    assert task.problems[0].grade("2 + 2 = 4") == 1.0  # number
    assert task.problems[1].grade("paris") == 1.0 and task.problems[1].grade("It is Paris") == 0.0  # exact
    assert task.problems[2].grade("Oh, HI there") == 1.0  # contains
    assert len(load_task(str(path), limit=2)) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a", "b"]', 'line 2: expected an object with "prompt" and "answer", got list'),
        ('{"prompt": "x"}', 'line 2: "answer" must be a string, got missing'),
        ('{"prompt": "x", "answer": 4}', 'line 2: "answer" must be a string, got int 4'),
        ('{"prompt": "x", "answer": "4", "match": "fuzzy"}', 'line 2: "match" is \'fuzzy\'; valid: number, exact, contains'),
        ('{"prompt": "x", "answer": "four", "match": "number"}', "line 2: \"match\" is \"number\" but the answer 'four'"),
    ],
)
def test_malformed_task_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "answer": "1"}\n' + line + "\n")
    with pytest.raises(TaskSpecError) as caught:
        load_task(str(path))
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_task_file_says_what_a_spec_is(tmp_path):
    with pytest.raises(TaskSpecError, match=r"neither rg:NAME nor an existing JSONL file"):
        load_task(str(tmp_path / "nope.jsonl"))


# -- strategies -----------------------------------------------------------------------------------


def test_strategy_names_parse_to_decodings():
    assert parse_eval_strategy("greedy").decoding.key == "greedy"
    assert parse_eval_strategy("default").decoding.key == "static:T=1,P=1"
    assert parse_eval_strategy("static:1.0,1.0").decoding == parse_eval_strategy("default").decoding  # shared cache
    assert parse_eval_strategy("static:0.7,0.9").decoding.key == "static:T=0.7,P=0.9"
    assert parse_eval_strategy("min-p:0.1").decoding.key == "static:T=1,P=1,min_p=0.1"
    assert parse_eval_strategy("edt").decoding.key == "edt:T0=1,N=0.8,theta=1"
    assert parse_eval_strategy("edt:0.7,0.5,2").decoding.edt == (0.7, 0.5, 2.0)
    autodeco_t = parse_eval_strategy("autodeco-t").decoding
    autodeco_p = parse_eval_strategy("autodeco-p").decoding
    assert (autodeco_t.use_temperature_head, autodeco_t.use_top_p_head) == (True, False)
    assert (autodeco_p.use_temperature_head, autodeco_p.use_top_p_head) == (False, True)
    assert parse_eval_strategy("oracle").decoding is None and parse_eval_strategy("mean-static").needs_heads
    assert parse_eval_strategy("mean-static@0.50").name == "mean-static@0.5"
    assert parse_eval_strategy("mean-static@0.5").mean_static_scale == 0.5 and parse_eval_strategy("mean-static@0.5").needs_heads
    with pytest.raises(UnknownStrategyError, match="mean-static@x"):
        parse_eval_strategy("mean-static@x")
    assert not parse_eval_strategy("oracle").needs_heads and parse_eval_strategy("autodeco").needs_heads


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(UnknownStrategyError) as caught:
        parse_eval_strategy("hot")
    assert str(caught.value) == f"Unknown strategy 'hot'; valid: {', '.join(STRATEGY_NAMES)}."
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("static:0.7", "write static:T,P"),
        ("static:0,0.9", "T must be > 0"),
        ("min-p:", "write min-p:X"),
        ("min-p:1.5", "X must be in (0, 1]"),
        ("edt:1,2", "write edt or edt:T0,N,theta"),
        ("edt:1,1.5,1", "0 < N < 1"),
    ],
)
def test_bad_strategy_parameters_name_the_fix(name, message):
    with pytest.raises(UnknownStrategyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_eval_strategy(name)


def test_short_task_names_stay_distinct():
    from deco_middleware.evaluation.report import short_task_names

    names = short_task_names(["rg:products?max_digits=1", "rg:products?max_digits=2", "data/my_tasks.jsonl"])
    assert list(names.values()) == ["products", "products#2", "my_tasks.jsonl"]
