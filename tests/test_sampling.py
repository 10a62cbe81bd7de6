"""The per-row decoding algorithm on synthetic logits, over every installed engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deco_middleware.sampling import (
    DecodingSettings,
    min_p_filter,
    nucleus_filter,
    resolve_decoding,
    top_k_filter,
    warp_temperature,
)

torch = pytest.importorskip("torch")

ENGINES = {
    "numpy": lambda a: np.asarray(a, dtype=np.float32),
    "torch": lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32),
}


def to_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    return ENGINES[request.param]


def reference_nucleus_keep(row: np.ndarray, p: float) -> set[int]:
    """Brute force: add tokens by descending probability until the mass reaches p."""
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    if p >= 1.0:
        return set(range(len(row)))
    order = sorted(range(len(row)), key=lambda i: (-probs[i], i))
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += probs[i]
        if mass >= p:
            break
    return set(kept)


def test_nucleus_matches_brute_force_per_row(engine):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)) * 3
    top_p = np.array([0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
    filtered, sizes = nucleus_filter(engine(logits), engine(top_p))
    filtered = to_numpy(filtered)
    for row in range(6):
        kept = set(np.flatnonzero(np.isfinite(filtered[row])))
        assert kept == reference_nucleus_keep(logits[row].astype(np.float32), top_p[row]), row
        assert to_numpy(sizes)[row] == len(kept)
    # P = 0 keeps exactly the most likely token; P = 1 keeps everything.
    assert list(np.flatnonzero(np.isfinite(filtered[0]))) == [int(np.argmax(logits[0]))]
    assert np.isfinite(filtered[5]).all()


def test_nucleus_matches_transformers_top_p_warper():
    from transformers import TopPLogitsWarper

    rng = np.random.default_rng(1)
    logits = torch.as_tensor(rng.normal(size=(4, 200)) * 2, dtype=torch.float32)
    for p in (0.3, 0.7, 0.95):
        ours, _ = nucleus_filter(logits, torch.full((4,), p))
        theirs = TopPLogitsWarper(p)(None, logits)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs)), p


def test_nucleus_keeps_dominant_token_and_ties(engine):
    logits = np.array([[30.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    filtered, sizes = nucleus_filter(engine(logits), engine([0.5, 0.5]))
    assert to_numpy(sizes).tolist() == [1, 2]


def test_filters_never_modify_scores_in_place(engine):
    logits = engine(np.random.default_rng(2).normal(size=(3, 40)))
    before = to_numpy(logits).copy()
    nucleus_filter(logits, engine([0.2, 0.5, 0.9]))
    warp_temperature(logits, engine([0.0, 0.5, 1.5]))
    top_k_filter(logits, 5)
    min_p_filter(logits, 0.1)
    np.testing.assert_array_equal(to_numpy(logits), before)


def test_warp_temperature_per_row_and_greedy(engine):
    logits = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    out = to_numpy(warp_temperature(engine(logits), engine([0.5, 0.0])))
    np.testing.assert_allclose(out[0], logits[0] / 0.5)
    assert out[1].tolist() == [-math.inf, -math.inf, 4.0]


def test_top_k_and_min_p(engine):
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = np.isfinite(to_numpy(top_k_filter(engine(logits), 2)))
    assert kept_k.tolist() == [[True, True, False, False]]
    kept_min_p = np.isfinite(to_numpy(min_p_filter(engine(logits), 0.25)))
    assert kept_min_p.tolist() == [[True, True, True, False]]


def test_resolve_applies_scales_bounds_and_fallback(engine):
    settings = DecodingSettings(temperature_scale=0.5, top_p_scale=2.0, min_temperature=0.2, max_temperature=0.6,
                                fallback_temperature=0.8, fallback_top_p=0.3)
    t_pred = engine([0.2, 1.0, 2.0, np.nan])
    p_pred = engine([0.3, 0.6, np.inf, 0.5])
    finite = np.array([True, True, True, True])
    finite = torch.as_tensor(finite) if not isinstance(t_pred, np.ndarray) else finite
    resolved = resolve_decoding(t_pred, p_pred, finite, settings)
    np.testing.assert_allclose(to_numpy(resolved.temperature), [0.2, 0.5, 0.4, 0.4], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(resolved.top_p), [0.6, 1.0, 0.6, 0.6], rtol=1e-6)
    assert to_numpy(resolved.fallback).tolist() == [False, False, True, True]


def test_resolve_greedy_and_switched_off_heads(engine):
    finite = np.array([True, False])
    t_pred, p_pred = engine([0.7, 0.7]), engine([0.4, 0.4])
    if not isinstance(t_pred, np.ndarray):
        finite = torch.as_tensor(finite)
    greedy = resolve_decoding(t_pred, p_pred, finite, DecodingSettings(temperature_scale=0.0, min_temperature=0.5))
    assert to_numpy(greedy.temperature).tolist() == [0.0, 0.0]
    no_heads = resolve_decoding(t_pred, p_pred, finite, DecodingSettings(use_temperature_head=False, use_top_p_head=False))
    assert to_numpy(no_heads.temperature).tolist() == [1.0, 1.0]
    assert to_numpy(no_heads.top_p).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature_scale": -1.0}, "`temperature_scale` has to be >= 0.0, got -1.0. Use 0 for greedy"),
        ({"top_p_scale": 0.0}, "`top_p_scale` has to be > 0.0, got 0.0."),
        ({"min_temperature": 1.5, "max_temperature": 0.5}, "`min_temperature` (1.5) is larger than `max_temperature` (0.5)"),
        ({"fallback_top_p": 1.5}, "`fallback_top_p` has to be > 0.0 and <= 1.0, got 1.5."),
        ({"top_k": -3}, "`top_k` has to be a non-negative integer"),
        ({"min_p": float("nan")}, "`min_p` has to be a number, got nan."),
    ],
)
def test_impossible_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError) as error:
        DecodingSettings(**kwargs)
    assert message in str(error.value)


def test_unknown_engine_lists_supported():
    with pytest.raises(TypeError, match="supported engines: numpy, torch"):
        nucleus_filter([[1.0, 2.0]], [0.5])


def random_rows(rng, batch, vocab):
    """Logits with the shapes that break nucleus filters: peaked, flat, tied and one-hot-like rows."""
    kind = rng.integers(0, 5)
    if kind == 0:
        return rng.normal(size=(batch, vocab)) * rng.uniform(0.5, 8)
    if kind == 1:  # heavy ties: few distinct values
        return rng.integers(0, 4, size=(batch, vocab)).astype(np.float64) * rng.uniform(0.5, 3)
    if kind == 2:  # one token holds almost all mass
        rows = rng.normal(size=(batch, vocab))
        rows[np.arange(batch), rng.integers(0, vocab, batch)] += 40
        return rows
    if kind == 3:  # nearly flat: nucleus larger than the candidate window, forcing the fallback
        return rng.normal(size=(batch, vocab)) * 0.01
    rows = rng.normal(size=(batch, vocab)) * 4  # with -inf already masked by an earlier filter
    rows[rng.random((batch, vocab)) < 0.3] = -np.inf
    rows[:, 0] = 5.0
    return rows


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
def test_fast_nucleus_selects_exactly_the_full_sort_tokens(engine_name):
    from deco_middleware.sampling import nucleus_filter_reference

    make = ENGINES[engine_name]
    rng = np.random.default_rng(123)
    for trial in range(300):
        batch, vocab = int(rng.integers(1, 6)), int(rng.choice([5, 70, 1000]))
        logits = make(random_rows(rng, batch, vocab))
        top_p = make(rng.choice([0.0, 0.05, 0.3, 0.5, 0.9, 0.95, 0.999, 1.0], size=batch))
        fast, fast_sizes = nucleus_filter(logits, top_p, candidates=(4, 16))
        ref, ref_sizes = nucleus_filter_reference(logits, top_p)
        np.testing.assert_array_equal(np.isfinite(to_numpy(fast)), np.isfinite(to_numpy(ref)), err_msg=f"trial {trial}")
        np.testing.assert_array_equal(to_numpy(fast_sizes), to_numpy(ref_sizes))


def mixed_rows(rng, batch, vocab):
    """A batch whose rows are of different kinds, so one call takes several of the filter's paths."""
    return np.concatenate([random_rows(rng, 1, vocab) for _ in range(batch)])


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("candidates", [(4, 16), (2, 8, 32), (64, 1024, 8192)])
def test_fast_nucleus_on_mixed_rows_selects_the_full_sort_tokens(engine_name, candidates):
    from deco_middleware.sampling import nucleus_filter_reference

    make = ENGINES[engine_name]
    rng = np.random.default_rng(7)
    for trial in range(150):
        batch, vocab = int(rng.integers(1, 9)), int(rng.choice([5, 70, 1000]))
        logits = make(mixed_rows(rng, batch, vocab))
        top_p = make(rng.choice([0.0, 0.3, 0.9, 0.999, 0.99999, 1.0], size=batch))
        fast, fast_sizes = nucleus_filter(logits, top_p, candidates=candidates)
        ref, ref_sizes = nucleus_filter_reference(logits, top_p)
        np.testing.assert_array_equal(np.isfinite(to_numpy(fast)), np.isfinite(to_numpy(ref)), err_msg=f"trial {trial}")
        kept = np.isfinite(to_numpy(ref))
        np.testing.assert_array_equal(to_numpy(fast)[kept], to_numpy(logits)[kept])  # kept scores are untouched
        np.testing.assert_array_equal(to_numpy(fast_sizes), to_numpy(ref_sizes))


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
def test_fast_nucleus_paths_one_by_one(engine_name):
    """Each row of this batch takes one path of the windowed filter (windows 4 and 16, vocab 70)."""
    from deco_middleware.sampling import nucleus_filter_reference

    make = ENGINES[engine_name]
    vocab = 70
    rows = np.full((7, vocab), -5.0)
    rows[0, [3, 9]] = [6.0, 5.0]  # clean: nucleus of 2 inside the first window
    rows[1, [10, 20, 30, 40, 50]] = 4.0  # five tied tokens, nucleus of 3 cuts the tie: lowest indices win
    rows[2, :12] = np.linspace(3.0, 2.0, 12)  # nucleus larger than 4, inside the second window (values only)
    rows[3] = np.linspace(0.0, -0.01, vocab)  # nearly flat: larger than every window, value sort of the row
    rows[4, 0] = 3.0  # top_p = 1: row untouched
    rows[5] = -np.inf  # no finite token: probabilities are NaN, the reference decides
    rows[6, 60] = 50.0  # one token holds all the mass
    top_p = np.array([0.9, 0.5, 0.8, 0.9, 1.0, 0.5, 0.999])
    with np.errstate(invalid="ignore"):  # numpy's softmax of the all -inf row is NaN, and says so
        fast, sizes = nucleus_filter(make(rows), make(top_p), candidates=(4, 16))
        ref, ref_sizes = nucleus_filter_reference(make(rows), make(top_p))
    np.testing.assert_array_equal(np.isfinite(to_numpy(fast)), np.isfinite(to_numpy(ref)))
    np.testing.assert_array_equal(to_numpy(sizes), to_numpy(ref_sizes))
    assert list(np.flatnonzero(np.isfinite(to_numpy(fast)[1]))) == [10, 20, 30]
    assert to_numpy(sizes)[[0, 4, 5, 6]].tolist() == [2, vocab, 0, 1]
    assert 16 < to_numpy(sizes)[3] < vocab


def test_fast_nucleus_returns_scores_when_no_row_is_filtered():
    logits = torch.randn(3, 50)
    filtered, sizes = nucleus_filter(logits, torch.ones(3))
    assert filtered is logits
    assert sizes.tolist() == [50, 50, 50]


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
def test_value_sorts_match_a_full_sort(engine_name):
    from deco_middleware.sampling import ops_for

    rng = np.random.default_rng(3)
    values = ENGINES[engine_name](rng.integers(0, 20, size=(4, 300)) / 7.0)  # many ties
    ops = ops_for(values)
    expected = -np.sort(-to_numpy(values), axis=-1)
    np.testing.assert_array_equal(to_numpy(ops.sort_values_desc(values)), expected)
    for k in (1, 5, 100, 300):
        np.testing.assert_array_equal(to_numpy(ops.topk_values(values, k)), expected[:, :k])
    top_values, top_indices = ops.topk(values, 10)
    np.testing.assert_array_equal(to_numpy(top_values), expected[:, :10])
    np.testing.assert_array_equal(np.take_along_axis(to_numpy(values), to_numpy(top_indices), axis=-1), expected[:, :10])


def test_fast_nucleus_on_bfloat16_scores_matches_the_reference():
    from deco_middleware.sampling import nucleus_filter_reference

    rng = np.random.default_rng(11)
    logits = torch.as_tensor(mixed_rows(rng, 6, 1000), dtype=torch.bfloat16)
    top_p = torch.tensor([0.3, 0.9, 0.999, 0.99999, 1.0, 0.5])
    fast, sizes = nucleus_filter(logits, top_p, candidates=(4, 128))
    ref, ref_sizes = nucleus_filter_reference(logits, top_p)
    assert torch.equal(torch.isfinite(fast), torch.isfinite(ref)) and torch.equal(sizes, ref_sizes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temperature_division_equals_torch_division_bit_for_bit(dtype):
    scores = torch.randn(5, 3000, dtype=dtype) * 7
    temperature = torch.tensor([0.3, 0.7, 1.0, 1.9, 1e-9])
    warped = warp_temperature(scores, temperature)
    assert warped.dtype == dtype
    assert torch.equal(warped, scores / temperature.clamp(min=1e-6)[:, None])
