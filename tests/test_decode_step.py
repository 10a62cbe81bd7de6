"""The one decoding step (decode_step + draw + RowRandom) on synthetic logits, over every engine.

Every case is checked against a brute-force reference written here in plain numpy, on numpy and
torch inputs alike; the step never edits its inputs in place.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from deco_middleware.sampling import (
    NO_TOKEN,
    DecodingSettings,
    EntropyTemperaturePredictor,
    LearnedPredictor,
    MinP,
    RowDecisions,
    RowRandom,
    ScoreFilter,
    StaticPredictor,
    TopK,
    batch_seeds,
    decode_step,
    derive_seed,
    draw,
    nucleus_filter,
    nucleus_filter_reference,
    row_seeds,
)

torch = pytest.importorskip("torch")

ENGINES = {
    "numpy": lambda a: np.array(a, dtype=np.float32),
    "torch": lambda a: torch.tensor(np.asarray(a), dtype=torch.float32),
}


def host(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    return ENGINES[request.param]


# -- brute-force references -------------------------------------------------------------------------


def softmax64(row):
    row = np.asarray(row, dtype=np.float64)
    finite = row > -np.inf
    out = np.zeros_like(row)
    out[finite] = np.exp(row[finite] - row[finite].max())
    return out / out.sum()


def brute_keep(row, temperature, top_p, top_k=None, min_p=None):
    """The kept token set of one row, written out step by step (ties ranked by vocabulary index)."""
    row = np.asarray(row, dtype=np.float32)
    if temperature == 0:
        return {int(np.argmax(row))}
    scores = row / np.float32(max(temperature, 1e-6))
    kept = set(range(len(row)))
    if top_k:
        kth = sorted(scores, reverse=True)[top_k - 1]
        kept = {i for i in kept if scores[i] >= kth}
    if min_p:
        masked = np.where([i in kept for i in range(len(row))], scores, -np.inf)
        probs = softmax64(masked)
        kept = {i for i in kept if probs[i] >= min_p * probs.max() - 1e-12}
    if top_p >= 1:
        return kept
    masked = np.where([i in kept for i in range(len(row))], scores, -np.inf)
    probs = softmax64(masked)
    order = sorted(kept, key=lambda i: (-probs[i], i))
    out, mass = [], 0.0
    for i in order:
        out.append(i)
        mass += probs[i]
        if mass >= np.float32(top_p):
            break
    return set(out)


def brute_draw(row, uniform):
    """Inverse CDF over the whole vocabulary in float64: the first token whose mass exceeds u."""
    probs = softmax64(row)
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, uniform * cdf[-1], side="right"), len(row) - 1))


class FixedHeads:
    """Synthetic head outputs (no ONNX): what ``DecodingHeads.run`` returns, chosen by the test."""

    def __init__(self, temperature, top_p):
        self.temperature = np.asarray(temperature, dtype=np.float32)
        self.top_p = np.asarray(top_p, dtype=np.float32)
        self.calls = []

    def run(self, hidden, logits):
        self.calls.append((hidden.copy(), logits.copy()))
        return self.temperature.copy(), self.top_p.copy()


# -- decode_step -----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, top_p, filters", [
    (0.7, 0.9, ()), (1.3, 1.0, ()), (0.0, 0.9, ()), (0.8, 0.6, (TopK(5),)), (1.0, 0.95, (MinP(0.05),)),
    (0.5, 0.3, (TopK(12), MinP(0.1))),
])
def test_static_step_keeps_the_brute_force_tokens(engine, temperature, top_p, filters):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(5, 40)) * 3).astype(np.float32)
    scores = engine(logits)
    before = host(scores).copy()
    out = decode_step(StaticPredictor(temperature, top_p, filters), scores)
    np.testing.assert_array_equal(host(scores), before)  # never edited in place
    assert type(out.scores) is type(scores)
    top_k = next((f.k for f in filters if isinstance(f, TopK)), None)
    min_p = next((f.p for f in filters if isinstance(f, MinP)), None)
    for row in range(5):
        kept = set(np.flatnonzero(np.isfinite(host(out.scores)[row])).tolist())
        assert kept == brute_keep(logits[row], temperature, top_p, top_k, min_p), row
        assert out.nucleus_size[row] == len(kept)
    assert out.temperature.tolist() == [temperature] * 5 and out.top_p.tolist() == [top_p] * 5
    assert out.temperature.dtype == np.float64 and not out.fallback.any() and not out.nonfinite.any()


def test_kept_scores_are_the_scores_divided_by_the_float32_temperature(engine):
    logits = np.random.default_rng(2).normal(size=(3, 30)).astype(np.float32)
    out = decode_step(StaticPredictor(0.7, 1.0), engine(logits))
    np.testing.assert_array_equal(host(out.scores), logits / np.float32(0.7))


def test_learned_step_uses_the_heads_settings_and_fallback(engine):
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(4, 50)) * 2).astype(np.float32)
    hidden = rng.normal(size=(4, 8)).astype(np.float32)
    hidden[2, 3] = np.nan  # this row falls back to the fallback T/P
    heads = FixedHeads([0.5, 1.2, 0.9, np.inf], [0.8, 0.95, 0.5, 0.7])  # row 3: head output not finite
    settings = DecodingSettings(temperature_scale=1.5, top_p_scale=0.9, max_temperature=1.5, top_k=20,
                                fallback_temperature=0.6, fallback_top_p=0.8)
    out = decode_step(LearnedPredictor(heads, settings), engine(logits), hidden=engine(hidden))
    expected_t = [np.float32(0.5) * np.float32(1.5), 1.5, np.float32(0.6) * np.float32(1.5),
                  np.float32(0.6) * np.float32(1.5)]
    expected_p = [np.float32(np.float32(0.8) * np.float32(0.9)), np.float32(np.float32(0.95) * np.float32(0.9)),
                  np.float32(np.float32(0.8) * np.float32(0.9)), np.float32(np.float32(0.8) * np.float32(0.9))]
    np.testing.assert_allclose(out.temperature, expected_t, rtol=1e-6)
    np.testing.assert_allclose(out.top_p, expected_p, rtol=1e-6)
    assert out.fallback.tolist() == [False, False, True, True] and not out.nonfinite.any()
    for row in range(4):
        kept = set(np.flatnonzero(np.isfinite(host(out.scores)[row])).tolist())
        assert kept == brute_keep(logits[row], out.temperature[row], out.top_p[row], top_k=20), row
    seen_hidden, seen_logits = heads.calls[0]
    np.testing.assert_array_equal(seen_logits, logits)
    assert np.isnan(seen_hidden[2, 3])


def test_the_predictor_sees_raw_logits_while_the_step_shapes_the_penalised_scores(engine):
    logits = np.array([[3.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    penalised = np.array([[0.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    heads = FixedHeads([1.0], [0.4])
    out = decode_step(LearnedPredictor(heads, DecodingSettings()), engine(penalised), raw_logits=engine(logits),
                      hidden=engine(np.zeros((1, 4))))
    np.testing.assert_array_equal(heads.calls[0][1], logits)
    assert np.flatnonzero(np.isfinite(host(out.scores)[0])).tolist() == [1]


def test_learned_step_without_a_hidden_state_is_refused(engine):
    from deco_middleware.errors import HiddenStateUnavailableError

    with pytest.raises(HiddenStateUnavailableError, match="hidden state"):
        decode_step(LearnedPredictor(FixedHeads([1.0], [1.0])), engine(np.zeros((1, 5))))


def test_entropy_temperature_follows_the_formula(engine):
    logits = np.array([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    predictor = EntropyTemperaturePredictor(base_temperature=0.9, exponent_base=0.8, theta=0.5, min_temperature=1e-4)
    out = decode_step(predictor, engine(logits))
    for row in range(3):
        probs = softmax64(logits[row])
        entropy = -(probs * np.log(probs)).sum()
        assert out.temperature[row] == pytest.approx(max(0.9 * 0.8 ** (0.5 / entropy), 1e-4), rel=1e-12)
    assert out.top_p.tolist() == [1.0, 1.0, 1.0]
    assert not predictor.uses_hidden_state


def test_a_greedy_row_keeps_only_its_argmax_and_draw_returns_it_whatever_the_uniform(engine):
    logits = np.random.default_rng(4).normal(size=(3, 25)).astype(np.float32)
    out = decode_step(StaticPredictor(0.0), engine(logits))
    for uniform in (0.0, 0.5, 1.0 - 1e-12):
        assert draw(out.scores, np.full(3, uniform)).tolist() == np.argmax(logits, axis=-1).tolist()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_row_gets_no_distribution_and_leaves_the_other_rows_alone(engine, bad):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 20)).astype(np.float32)
    broken = logits.copy()
    broken[1, 4] = bad
    out = decode_step(StaticPredictor(0.8, 0.9, (MinP(0.01),)), engine(broken))
    clean = decode_step(StaticPredictor(0.8, 0.9, (MinP(0.01),)), engine(logits))
    assert out.nonfinite.tolist() == [False, True, False] and out.fallback.tolist() == [False, True, False]
    assert not np.isfinite(host(out.scores)[1]).any() and out.nucleus_size[1] == 0
    np.testing.assert_array_equal(host(out.scores)[[0, 2]], host(clean.scores)[[0, 2]])
    assert draw(out.scores, np.array([0.3, 0.3, 0.3]))[1] == NO_TOKEN


def test_a_row_of_only_minus_infinity_is_non_finite(engine):
    logits = np.zeros((2, 6), dtype=np.float32)
    logits[0] = -np.inf
    out = decode_step(StaticPredictor(1.0, 0.5), engine(logits))
    assert out.nonfinite.tolist() == [True, False]


def test_decode_step_is_the_same_on_numpy_and_torch():
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(6, 300)) * 4).astype(np.float32)
    for predictor in (StaticPredictor(0.7, 0.9), EntropyTemperaturePredictor(), StaticPredictor(1.0, 0.5, (TopK(40),))):
        a = decode_step(predictor, ENGINES["numpy"](logits))
        b = decode_step(predictor, ENGINES["torch"](logits))
        np.testing.assert_array_equal(host(a.scores), host(b.scores))
        np.testing.assert_array_equal(a.temperature, b.temperature)
        np.testing.assert_array_equal(a.nucleus_size, b.nucleus_size)


def test_predictor_rows_must_match_the_batch():
    class Wrong:
        uses_hidden_state = False

        def predict(self, hidden, logits):
            return RowDecisions(np.ones(3), np.ones(2), np.zeros(2, dtype=bool))

    with pytest.raises(ValueError, match=r"`temperature` must have shape \[2\]"):
        decode_step(Wrong(), np.zeros((2, 4), dtype=np.float32))


def test_a_custom_score_filter_runs_between_temperature_and_nucleus(engine):
    class DropFirst:
        def apply(self, scores):
            from deco_middleware.sampling import ops_for

            ops = ops_for(scores)
            mask = ops.from_host(np.arange(scores.shape[-1]) == 0, scores)
            return ops.masked_fill(scores, mask[None, :], -math.inf)

    assert isinstance(DropFirst(), ScoreFilter)
    logits = np.array([[5.0, 1.0, 0.5, 0.0]], dtype=np.float32)
    out = decode_step(StaticPredictor(1.0, 1.0, (DropFirst(),)), engine(logits))
    assert np.flatnonzero(np.isfinite(host(out.scores)[0])).tolist() == [1, 2, 3]


# -- draw, RowRandom, row_seeds ----------------------------------------------------------------------


def test_draw_equals_the_full_vocabulary_inverse_cdf(engine):
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(8, 60)) * 2).astype(np.float32)
    shaped = decode_step(StaticPredictor(0.9, 0.8), engine(logits)).scores
    shaped_host = host(shaped)
    for trial in range(20):
        uniforms = rng.random(8)
        got = draw(shaped, uniforms)
        assert got.dtype == np.int64
        assert got.tolist() == [brute_draw(shaped_host[r], uniforms[r]) for r in range(8)]
        assert all(np.isfinite(shaped_host[r, t]) for r, t in enumerate(got))


def test_draw_refuses_the_wrong_number_of_uniforms():
    with pytest.raises(ValueError, match=r"one value per row, shape \[2\]"):
        draw(np.zeros((2, 3), dtype=np.float32), np.zeros(3))


def test_row_random_streams_do_not_depend_on_the_other_rows():
    together = RowRandom([11, 12, 13])
    alone = RowRandom([12])
    first = together.next()
    assert first[1] == alone.next()[0]
    assert together.next(np.array([1]))[0] == alone.next()[0]  # only row 1 advanced
    assert together.next()[0] == np.random.Generator(np.random.PCG64(11)).random(2)[1]


def test_row_seeds_is_the_one_derivation():
    assert row_seeds(3, 2, "task", "p1") == [derive_seed(3, "task", "p1", 0), derive_seed(3, "task", "p1", 1)]
    assert batch_seeds(5, 2, 3) == [derive_seed(5, i, k) for i in range(2) for k in range(3)]
    # Pinned: the seeds must not change between releases (cached evaluation samples depend on them).
    assert derive_seed(0, 0, 0) == 1468212120013689913
    assert row_seeds(1, 3, "t", "p")[2] == 297395077705155621  # the harness's sample_seed(1, "t", "p", 2)
    with pytest.raises(ValueError, match="count"):
        row_seeds(0, -1)


# -- settings and numpy API validation (#18 item 7) ---------------------------------------------------


@pytest.mark.parametrize("name", ["temperature_scale", "min_temperature", "fallback_temperature", "top_p_scale"])
def test_infinite_settings_are_refused(name):
    with pytest.raises(ValueError, match=f"`{name}` has to be finite"):
        DecodingSettings(**{name: math.inf})


@pytest.mark.parametrize("name", ["temperature_scale", "top_p_scale", "fallback_temperature", "fallback_top_p"])
def test_none_is_refused_where_a_number_is_required(name):
    with pytest.raises(ValueError, match=f"`{name}` has to be a number, got None"):
        DecodingSettings(**{name: None})


def test_numpy_scalars_are_accepted_and_stored_as_floats():
    settings = DecodingSettings(temperature_scale=np.float32(0.5), top_p_scale=np.float64(0.9), top_k=np.int64(5),
                                max_temperature=math.inf)
    assert settings.temperature_scale == 0.5 and type(settings.temperature_scale) is float
    assert type(settings.top_k) is int and settings.max_temperature == math.inf


@pytest.mark.parametrize("value", ["no", 0, 1, None])
def test_head_switches_must_be_booleans(value):
    with pytest.raises(ValueError, match="`use_temperature_head` has to be True or False"):
        DecodingSettings(use_temperature_head=value)


@pytest.mark.parametrize("function", [nucleus_filter, nucleus_filter_reference])
def test_nucleus_refuses_nan_and_wrong_length_top_p(engine, function):
    scores = engine(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="`top_p` holds NaN"):
        function(scores, engine([0.5, np.nan, 0.9]))
    with pytest.raises(ValueError, match=r"one value per row, shape \[3\], got shape \[2\]"):
        function(scores, engine([0.5, 0.9]))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "`temperature` has to be >= 0"), ({"temperature": math.inf}, "finite"),
    ({"temperature": 0.7, "top_p": 0.0}, "`top_p` has to be > 0"), ({"temperature": 0.7, "top_p": 1.5}, "<= 1"),
])
def test_static_predictor_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StaticPredictor(**kwargs)


def test_a_head_the_artifact_did_not_train_is_switched_off_by_one_rule():
    from deco_middleware.sampling import DecodingSettings

    settings = DecodingSettings(temperature_scale=0.8)
    assert settings.for_trained_heads(("temperature", "top_p")) is settings
    only_t = settings.for_trained_heads(("temperature",))
    assert only_t.use_temperature_head and not only_t.use_top_p_head and only_t.temperature_scale == 0.8
    neither = settings.for_trained_heads(())
    assert not neither.use_temperature_head and not neither.use_top_p_head
