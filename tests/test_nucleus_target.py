"""The distilled top-p target (training/nucleus.py, issue #12): a rule's per-token nucleus as a top-p head.

The interval is checked against the decoding step's own p-less filter and nucleus on synthetic logits;
the fit on an in-memory cache (random hidden states and LM head: the stage only sees h, W); the CLI on a
tiny model saved to disk, down to the exported ONNX heads run by ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deco_middleware.baselines import PLess  # noqa: E402
from deco_middleware.heads.modules import AutoDecoHeads  # noqa: E402
from deco_middleware.sampling import nucleus_filter, nucleus_filter_reference  # noqa: E402
from deco_middleware.training.cache import FeatureCache  # noqa: E402
from deco_middleware.training.nucleus import (  # noqa: E402
    TopPTargetConfig,
    agreement,
    fit_top_p_target,
    p_less_interval,
    top_p_target_loss,
)


def _synthetic_logits(rows: int = 64, vocab: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.5, 2.0, 6.0, 15.0], size=(rows, 1))  # flat to very peaked rows
    return (rng.normal(size=(rows, vocab)) * scale).astype(np.float32)


@pytest.mark.parametrize("temperature", [0.2, 0.6, 1.0, 1.7])
def test_the_interval_nucleus_keeps_exactly_the_p_less_set(temperature: float) -> None:
    logits = _synthetic_logits(seed=int(temperature * 10))
    scores = logits / np.float32(temperature)
    p_less_kept = np.isfinite(PLess().apply(scores))
    low, high, size = p_less_interval(torch.from_numpy(logits), torch.full((len(logits),), temperature))
    assert np.array_equal(size.numpy(), p_less_kept.sum(-1))
    low, high = low.numpy(), high.numpy()
    # the interval's midpoint keeps exactly the rule's set, in both nucleus implementations (the end points
    # themselves are equalities of float sums, decided by rounding)
    top_p = (low + high) / 2
    for nucleus in (nucleus_filter_reference, nucleus_filter):
        kept = np.isfinite(nucleus(scores.copy(), top_p.astype(np.float64))[0])
        assert np.array_equal(kept, p_less_kept)
    # just below the interval one token fewer survives (where the set has more than one; every kept token
    # has p >= sum p^2 >= 1/|V|, far above the 1e-5 step)
    several = size.numpy() > 1
    assert several.any() and (~several).any()
    kept = np.isfinite(nucleus_filter_reference(scores.copy(), low.astype(np.float64) - 1e-5)[0])
    assert np.array_equal(kept.sum(-1)[several], size.numpy()[several] - 1)


def test_loss_and_agreement_on_hand_built_values() -> None:
    low, high = torch.tensor([0.0, 0.6, 0.9], dtype=torch.float64), torch.tensor([0.5, 0.8, 0.99], dtype=torch.float64)
    assert float(agreement(torch.tensor([0.25, 0.7, 0.95]), low, high)) == pytest.approx(1.0)
    assert float(agreement(torch.tensor([0.6, 0.6, 1.0], dtype=torch.float64), low, high)) == pytest.approx(0.0)  # (low, high] is open below
    at_mid = top_p_target_loss(((low + high) / 2).float(), low, high)
    assert float(at_mid) == pytest.approx(0.0, abs=1e-6)
    assert float(top_p_target_loss(torch.tensor([0.9, 0.1, 0.5]), low, high)) > 0.5


def _memory_cache(tokens: int = 1200, hidden_size: int = 16, vocab: int = 60, seed: int = 0) -> FeatureCache:
    rng = np.random.default_rng(seed)
    lm_head = (rng.normal(size=(vocab, hidden_size)) * 0.5).astype(np.float32)  # p-less keeps ~2 tokens
    hidden = rng.normal(size=(tokens, hidden_size)).astype(np.float32)
    sequence = np.repeat(np.arange(tokens // 8), 8).astype(np.int32)
    labels = rng.integers(0, vocab, tokens).astype(np.int64)
    return FeatureCache(Path("in-memory"), hidden, labels, sequence, lm_head, None, {})


def test_fitting_the_target_raises_agreement_keeps_the_temperature_head_and_is_seeded() -> None:
    cache = _memory_cache()
    torch.manual_seed(3)
    heads = AutoDecoHeads(16, inner_size=32)
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    config = TopPTargetConfig(learning_rate=3e-3, epochs=15, batch_size=64, validation_fraction=0.2, seed=1)
    fit = fit_top_p_target(heads, cache, config, progress=False)
    assert fit.validation["loss"] < fit.validation_before["loss"]
    assert fit.validation["agreement"] > fit.validation_before["agreement"] + 0.2
    assert fit.validation["agreement"] > 0.6
    trained = fit.heads.state_dict()
    for name, value in before.items():
        assert torch.equal(heads.state_dict()[name], value)  # the caller's heads are not modified
        if name.startswith("temp_head"):
            assert torch.equal(trained[name], value)  # the temperature head is frozen
    assert not torch.equal(trained["top_p_head.mlp.2.weight"], before["top_p_head.mlp.2.weight"])
    again = fit_top_p_target(heads, cache, config, progress=False)
    for name, value in trained.items():
        assert torch.equal(again.heads.state_dict()[name], value)


def test_branch_weight_buys_agreement_where_the_rule_keeps_several_tokens() -> None:
    cache = _memory_cache()
    torch.manual_seed(3)
    heads = AutoDecoHeads(16, inner_size=32)
    fits = {w: fit_top_p_target(heads, cache, TopPTargetConfig(learning_rate=3e-3, epochs=10, batch_size=64,
                                                               validation_fraction=0.2, seed=1, branch_weight=w),
                                progress=False) for w in (1.0, 10.0)}
    assert 0.1 < fits[1.0].validation["branching_share"] < 0.9
    assert fits[10.0].validation["agreement_branching"] > fits[1.0].validation["agreement_branching"]
    low, high = torch.tensor([0.0, 0.6], dtype=torch.float64), torch.tensor([0.5, 0.8], dtype=torch.float64)
    top_p = torch.tensor([0.9, 0.7])  # row 0 is off, row 1 at its midpoint
    plain = float(top_p_target_loss(top_p, low, high))
    assert float(top_p_target_loss(top_p, low, high, weight=torch.tensor([1.0, 1.0]))) == pytest.approx(plain)
    assert float(top_p_target_loss(top_p, low, high, weight=torch.tensor([1.0, 3.0]))) == pytest.approx(plain / 2)


def test_a_temperature_scale_is_folded_before_the_targets_are_taken() -> None:
    cache = _memory_cache()
    torch.manual_seed(3)
    heads = AutoDecoHeads(16, inner_size=32)
    fit = fit_top_p_target(heads, cache, TopPTargetConfig(epochs=1, batch_size=64, temperature_scale=0.5), progress=False)
    hidden = torch.from_numpy(np.asarray(cache.hidden[:50]))
    with torch.no_grad():
        assert torch.allclose(fit.heads.temp_head(hidden), 0.5 * heads.temp_head(hidden), rtol=1e-6)
    assert fit.validation_before["rule_size_mean"] < fit_top_p_target(
        heads, cache, TopPTargetConfig(epochs=1, batch_size=64), progress=False).validation_before["rule_size_mean"]


def test_unknown_target_and_bad_values_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="p-less"):
        TopPTargetConfig(target="min-p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="validation_fraction"):
        TopPTargetConfig(validation_fraction=1.0)
    with pytest.raises(ValueError, match="branch_weight"):
        TopPTargetConfig(branch_weight=0.0)
    with pytest.raises(ValueError, match="temperature_scale.*1 keeps"):
        TopPTargetConfig(temperature_scale=0.0)


def test_cli_distils_the_nucleus_into_exported_heads(tmp_path: Path) -> None:
    """cache -> fit (T head) -> top-p; the exported ONNX heads keep the source T and set P to the rule's nucleus."""
    pytest.importorskip("typer")
    from conftest import make_tiny_model, make_tiny_tokenizer
    from typer.testing import CliRunner

    from deco_middleware import DecodingHeads
    from deco_middleware.cli.app import app

    model_dir = tmp_path / "tiny"
    make_tiny_model(seed=5).save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "mine.jsonl"
    lines = [{"prompt": f"w{i} w{i + 1}", "completion": " ".join(f"w{(i + j) % 120}" for j in range(2, 12))}
             for i in range(0, 120, 2)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "cache", "--data", str(data), "--out", str(tmp_path / "cache"),
                                 "--model", str(model_dir), "--hidden-dtype", "float32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "fit", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "heads"),
                                 "--heads", "temperature", "--lr", "0.01", "--batch-tokens", "32", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "top-p", "--heads", str(tmp_path / "heads"), "--cache", str(tmp_path / "cache"),
                                 "--out", str(tmp_path / "heads-p"), "--lr", "0.003", "--epochs", "20",
                                 "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    source, distilled = DecodingHeads.from_pretrained(tmp_path / "heads"), DecodingHeads.from_pretrained(tmp_path / "heads-p")
    assert distilled.trained_heads == ("temperature", "top_p")
    record = distilled.manifest.training["top_p_target"]
    assert record["source_onnx_sha256"] == source.manifest.onnx.sha256
    assert record["command"].startswith("deco train top-p --heads")
    assert record["validation"]["agreement"] > record["validation_before_training"]["agreement"]
    cache = FeatureCache.open(tmp_path / "cache")
    hidden = np.array(cache.hidden, dtype=np.float32)
    logits = cache.logits(torch.from_numpy(hidden)).numpy()
    t_source, _ = source.run(hidden, logits)
    t_new, p_new = distilled.run(hidden, logits)
    np.testing.assert_array_equal(t_new, t_source)
    low, high, _ = p_less_interval(torch.from_numpy(logits), torch.from_numpy(t_new))
    assert float(agreement(torch.from_numpy(p_new), low, high)) > record["validation_before_training"]["agreement"]


def test_cli_refuses_heads_for_another_model(tmp_path: Path) -> None:
    pytest.importorskip("typer")
    from conftest import make_tiny_model, make_tiny_tokenizer
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app

    runner = CliRunner()
    for name, seed in (("a", 5), ("b", 6)):
        make_tiny_model(seed=seed).save_pretrained(tmp_path / name)
        make_tiny_tokenizer().save_pretrained(tmp_path / name)
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i}", "completion": f"w{i + 1} w{i + 2}"}) + "\n"
                            for i in range(12)), encoding="utf-8")
    for name in ("a", "b"):
        assert runner.invoke(app, ["train", "cache", "--data", str(data), "--out", str(tmp_path / f"cache-{name}"),
                                   "--model", str(tmp_path / name), "--hidden-dtype", "float32"]).exit_code == 0
    assert runner.invoke(app, ["train", "fit", "--cache", str(tmp_path / "cache-a"), "--out", str(tmp_path / "heads"),
                               "--heads", "temperature", "--epochs", "1"]).exit_code == 0
    result = runner.invoke(app, ["train", "top-p", "--heads", str(tmp_path / "heads"), "--cache", str(tmp_path / "cache-b"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "do not" in result.output and "fit the model" in result.output
    assert not (tmp_path / "out").exists()
