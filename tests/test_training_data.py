"""Rejection sampling on a tiny in-memory model: counts, seeding, and where each sample goes."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("reasoning_gym")

from conftest import make_tiny_model, make_tiny_tokenizer  # noqa: E402

from deco_middleware.training import SamplingConfig, TrainingDataError, data, rejection_sample  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model(seed=4), make_tiny_tokenizer()


@pytest.fixture
def odd_length_is_correct(monkeypatch):
    # The tiny model cannot solve arithmetic; a deterministic stand-in grader splits its replies.
    monkeypatch.setattr(data, "grade_reply", lambda reply, entry, scorer: float(len(reply.split()) % 2))


def _run(tiny, **changes):
    config = SamplingConfig(**{**dict(tasks=("products",), prompts_per_task=3, temperatures=(0.7, 1.2),
                                      samples_per_temperature=2, max_new_tokens=5, batch_size=4, seed=1), **changes})
    wrong: list[dict] = []
    records, summary = rejection_sample(*tiny, config, progress=False, wrong_out=wrong)
    return records, summary, wrong


def test_every_sample_is_graded_and_lands_in_records_or_wrong(tiny, odd_length_is_correct):
    records, summary, wrong = _run(tiny)
    assert summary["samples"] == 3 * 2 * 2  # prompts x temperatures x samples
    correct = sum(t["correct_samples"] for t in summary["tasks"].values())
    # Distinct completions per prompt are kept once (and empty wrong replies not at all).
    assert 0 < len(records) <= correct and 0 < len(wrong) <= summary["samples"] - correct
    assert summary["records"] == len(records) and summary["wrong_records"] == len(wrong)
    assert all(len(r["completion"].split()) % 2 == 1 and r["source"] == "sample" for r in records)
    assert all(len(r["completion"].split()) % 2 == 0 and r["source"] == "sample-wrong" for r in wrong)
    assert summary["generated_tokens"] > 0 and summary["prompt_tokens"] > 0


def test_samples_do_not_depend_on_the_batch_size_and_follow_the_seed(tiny, odd_length_is_correct):
    first, _, wrong_first = _run(tiny)
    rebatched, _, wrong_rebatched = _run(tiny, batch_size=16)
    assert first == rebatched and wrong_first == wrong_rebatched
    other, _, wrong_other = _run(tiny, seed=2)
    assert [r["completion"] for r in first + wrong_first] != [r["completion"] for r in other + wrong_other]


def test_unsolved_prompts_get_the_reference_answer_or_are_dropped(tiny, monkeypatch):
    monkeypatch.setattr(data, "grade_reply", lambda reply, entry, scorer: 0.0)
    records, summary, wrong = _run(tiny, unsolved="drop")
    assert records == [] and wrong
    records, summary, _ = _run(tiny, unsolved="reference")
    assert len(records) == 3 and {r["source"] for r in records} == {"reference"}
    assert all(r["completion"] for r in records) and summary["tasks"]["products"]["reference_added"] == 3


def test_unknown_task_and_policy_are_refused():
    with pytest.raises(TrainingDataError, match="the training tasks are"):
        SamplingConfig(tasks=("gcd",))
    with pytest.raises(TrainingDataError, match="`unsolved`"):
        SamplingConfig(unsolved="keep")  # type: ignore[arg-type]
