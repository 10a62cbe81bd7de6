"""The literature baselines (deco_middleware.baselines) against brute-force references on synthetic logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deco_middleware.baselines import (
    ConfidenceGatedPredictor,
    EntropyAdaptivePredictor,
    EntropyContinuousPredictor,
    FilteredStaticPredictor,
    PLess,
    TopNSigma,
    normalized_entropy,
    parse_baseline,
)

ENGINES = ["numpy"]
try:
    import torch

    ENGINES.append("torch")
except ImportError:  # the core env has no torch
    torch = None


def _logits(seed: int, rows: int = 6, vocab: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(rows, vocab)).astype(np.float32)
    logits[0, 3] += 12.0  # one very confident row
    logits[1] = 0.0  # one flat row (maximal entropy)
    return logits


def _as(engine: str, array: np.ndarray):
    return torch.from_numpy(array.copy()) if engine == "torch" else array.copy()


def _np(array) -> np.ndarray:
    return array.numpy() if torch is not None and isinstance(array, torch.Tensor) else np.asarray(array)


# -- brute-force references: one row at a time, plain Python floats --------------------------------


def _row_probs(row: list[float]) -> list[float]:
    finite = [x for x in row if x != -math.inf]
    top = max(finite)
    weights = [math.exp(x - top) if x != -math.inf else 0.0 for x in row]
    total = sum(weights)
    return [w / total for w in weights]


def _top_n_sigma_reference(row: list[float], n: float) -> list[float]:
    finite = [x for x in row if x != -math.inf]
    mean = sum(finite) / len(finite)
    sigma = math.sqrt(sum((x - mean) ** 2 for x in finite) / len(finite))
    cut = max(finite) - n * sigma
    return [x if x >= cut - 1e-5 * max(1.0, abs(cut)) and x != -math.inf else -math.inf for x in row]


def _p_less_reference(row: list[float]) -> list[float]:
    probs = _row_probs(row)
    threshold = sum(p * p for p in probs)
    best = max(range(len(row)), key=lambda i: row[i])
    return [x if (probs[i] >= threshold or i == best) else -math.inf for i, x in enumerate(row)]


def _entropy_reference(row: list[float]) -> float:
    probs = _row_probs(row)
    return -sum(p * math.log(p) for p in probs if p > 0) / math.log(len(row))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("n", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_n_sigma_matches_the_brute_force_reference(engine, n, seed):
    logits = _logits(seed)
    logits[2, :10] = -np.inf  # an already-filtered row: sigma is over the finite logits only
    scores = _as(engine, logits)
    out = _np(TopNSigma(n).apply(scores))
    expected = np.array([_top_n_sigma_reference(row, n) for row in logits.astype(np.float64).tolist()])
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
    np.testing.assert_allclose(out[np.isfinite(out)], logits[np.isfinite(out)])
    np.testing.assert_array_equal(_np(scores), logits)  # never in place


@pytest.mark.parametrize("engine", ENGINES)
def test_top_n_sigma_keeps_the_same_set_at_every_temperature(engine):
    logits = _logits(3)
    kept = [np.isfinite(_np(TopNSigma(1.0).apply(_as(engine, logits / t)))) for t in (0.3, 1.0, 2.5)]
    np.testing.assert_array_equal(kept[0], kept[1])
    np.testing.assert_array_equal(kept[1], kept[2])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_p_less_matches_the_brute_force_reference(engine, seed):
    logits = _logits(seed)
    scores = _as(engine, logits)
    out = _np(PLess().apply(scores))
    expected = np.array([_p_less_reference(row) for row in logits.astype(np.float64).tolist()])
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
    np.testing.assert_array_equal(_np(scores), logits)
    assert np.isfinite(out).sum(axis=-1).min() >= 1  # the most likely token always stays


def test_p_less_on_a_hand_computed_row():
    # p = (0.5, 0.3, 0.2): sum p^2 = 0.38, so only the first token stays; (0.4, 0.35, 0.25): 0.345 keeps two.
    out = PLess().apply(np.log(np.array([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25]])))
    assert np.isfinite(out).tolist() == [[True, False, False], [True, True, False]]


def test_normalized_entropy_matches_the_reference():
    logits = _logits(4)
    expected = [_entropy_reference(row) for row in logits.astype(np.float64).tolist()]
    np.testing.assert_allclose(normalized_entropy(logits), expected, rtol=1e-6, atol=1e-9)
    assert normalized_entropy(logits)[1] == pytest.approx(1.0)


def test_confidence_gated_is_greedy_exactly_where_the_top_probability_exceeds_tau():
    logits = _logits(5)
    top = np.array([max(_row_probs(row)) for row in logits.astype(np.float64).tolist()])
    tau = float(np.median(top))
    decisions = ConfidenceGatedPredictor(tau, 0.8).predict(None, logits)
    np.testing.assert_array_equal(decisions.temperature, np.where(top > tau, 0.0, 0.8))
    assert decisions.top_p.tolist() == [1.0] * len(logits) and not decisions.fallback.any()
    assert decisions.temperature.dtype == np.float64


def test_entropy_rules_follow_their_formulas():
    logits = _logits(6)
    entropy = np.array([_entropy_reference(row) for row in logits.astype(np.float64).tolist()])
    adaptive = EntropyAdaptivePredictor(0.5, 0.3, 1.0).predict(None, logits)
    np.testing.assert_array_equal(adaptive.temperature, np.where(entropy < 0.5, 0.3, 1.0))
    continuous = EntropyContinuousPredictor(0.2, 0.9).predict(None, logits)
    np.testing.assert_allclose(continuous.temperature, 0.2 + 0.7 * entropy, rtol=1e-9)
    assert continuous.temperature[1] == pytest.approx(0.9)  # the flat row gets T_max


def test_filtered_static_hands_its_filters_to_the_step():
    decisions = FilteredStaticPredictor(0.7, (PLess(),)).predict(None, _logits(7))
    assert decisions.temperature.tolist() == [0.7] * 6 and isinstance(decisions.filters[0], PLess)


def test_parse_baseline_names_defaults_and_errors():
    assert parse_baseline("confidence").key == "confidence:0.9,1"
    assert parse_baseline("top-n-sigma:1,0.7").key == "top-n-sigma:1,0.7"
    assert parse_baseline("static:0.7,0.9") is None
    with pytest.raises(ValueError, match=r"entropy-adaptive:THRESHOLD,T_LOW,T_HIGH"):
        parse_baseline("entropy-adaptive:0.1")
    with pytest.raises(ValueError, match="`threshold` has to be a probability"):
        parse_baseline("confidence:1.5,1.0")
    with pytest.raises(ValueError, match="swap them"):
        parse_baseline("entropy-continuous:1.0,0.3")


def test_a_baseline_runs_through_the_one_decoding_step_with_greedy_rows():
    torch_ = pytest.importorskip("torch")
    from deco_middleware.sampling import decode_step, draw

    logits = torch_.from_numpy(_logits(8))
    predictor = ConfidenceGatedPredictor(0.5, 1.0)
    step = decode_step(predictor, logits)
    greedy = step.temperature == 0
    assert greedy.any() and not greedy.all()
    kept = torch_.isfinite(step.scores).sum(dim=-1).numpy()
    assert (kept[greedy] == 1).all() and (kept[~greedy] == logits.shape[-1]).all()
    assert (step.scores.argmax(dim=-1) == logits.argmax(dim=-1))[torch_.from_numpy(greedy)].all()
    chosen = draw(step.scores, np.full(logits.shape[0], 0.5))
    assert (chosen[greedy] == logits.argmax(dim=-1).numpy()[greedy]).all()


def test_baselines_are_names_of_the_one_strategy_vocabulary():
    from deco_middleware.strategies import parse_strategy, strategy_names
    from deco_middleware.errors import UnknownStrategyError

    assert "confidence:TAU,T_HIGH" in strategy_names()
    strategy = parse_strategy("confidence:0.9,1")
    assert strategy.key == "confidence:0.9,1" and not strategy.needs_heads
    assert isinstance(strategy.predictor(), ConfidenceGatedPredictor)
    assert parse_strategy("p-less").key == "p-less:1"
    assert parse_strategy("min-p:0.1,0.7").temperature == 0.7
    with pytest.raises(UnknownStrategyError, match="swap them"):
        parse_strategy("entropy-continuous:1.0,0.3")

def test_learned_temperature_with_p_less_is_the_heads_t_then_the_exact_rule(tiny_heads):
    """`autodeco-t+p-less`: the T head's temperature, P = 1, and the p-less set of softmax(l / T) in the step."""
    from deco_middleware.sampling import DecodingSettings, LearnedPredictor, decode_step
    from deco_middleware.strategies import parse_strategy

    strategy = parse_strategy("autodeco-t+p-less")
    assert strategy.learned and strategy.key == "autodeco-t+p-less"
    rng = np.random.default_rng(4)
    hidden = rng.normal(size=(5, tiny_heads.hidden_size)).astype(np.float32)
    logits = (rng.normal(size=(5, 128)) * 3).astype(np.float32)
    predictor = strategy.predictor(tiny_heads)
    decisions = predictor.predict(hidden, logits)
    alone = LearnedPredictor(tiny_heads, DecodingSettings(use_top_p_head=False)).predict(hidden, logits)
    np.testing.assert_array_equal(decisions.temperature, alone.temperature)
    assert decisions.top_p.tolist() == [1.0] * 5 and isinstance(decisions.filters[-1], PLess)
    step = decode_step(predictor, logits, hidden=hidden)
    tempered = logits / decisions.temperature.astype(np.float32)[:, None]
    expected = np.isfinite(PLess().apply(tempered))
    np.testing.assert_array_equal(np.isfinite(step.scores), expected)
    assert (expected.sum(-1) > 1).any() and (expected.sum(-1) < 128).all()
    with pytest.raises(Exception, match="pass `heads`"):
        strategy.predictor(None)
    with pytest.raises(Exception, match="takes no parameters"):
        parse_strategy("autodeco-t+p-less:0.5")
