"""Optional temperature-head features from the raw logits (issue #12, "Head inputs").

``heads.temperature_features = "hidden+logit-stats"``: the temperature head reads
``concat[h, max_prob, entropy]`` of ``softmax(raw logits)`` at T = 1. Covered here: the statistics
against numpy (torch and inside the ONNX graph), torch vs ONNX Runtime on both architectures, the
manifest field (round trip, default omitted, unknown values refused, version), the load-time
contract and probe, training through `deco train fit` / `deco train outcome`, and the reference
exporter's refusal. Every load runs a real ONNX Runtime session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import helper, numpy_helper  # noqa: E402

from deco_middleware import DecodingHeads, export_heads  # noqa: E402
from deco_middleware.errors import IntegrityError, ManifestError, ReferenceCheckpointError  # noqa: E402
from deco_middleware.fingerprint import METHOD, fingerprint_from_matrix  # noqa: E402
from deco_middleware.heads.modules import AutoDecoHeads, logit_statistics  # noqa: E402
from deco_middleware.manifest import (  # noqa: E402
    MANIFEST_NAME,
    ONNX_NAME,
    TEMPERATURE_FEATURES,
    BaseModelIdentity,
    HeadArchitecture,
    HeadManifest,
    LMHeadFingerprint,
    sha256_file,
)

HIDDEN, VOCAB, INNER = 24, 300, 32
STATS = "hidden+logit-stats"
# torch and ONNX Runtime both compute in float32; sums over the vocabulary run in different orders.
RTOL, ATOL = 1e-5, 2e-6


def identity(seed: int = 0) -> BaseModelIdentity:
    lm_head = np.random.default_rng(seed).standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    return BaseModelIdentity(name="synthetic", architecture="SyntheticForCausalLM", hidden_size=HIDDEN, vocab_size=VOCAB,
                             lm_head_fingerprint=LMHeadFingerprint(method=METHOD, values=fingerprint_from_matrix(lm_head)))


def numpy_stats(logits: np.ndarray) -> np.ndarray:
    """The reference, in float64: max p and -sum p log(p + 1e-8) of softmax(logits)."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.stack([p.max(-1), -(p * np.log(p + 1e-8)).sum(-1)], axis=-1)


def random_inputs(seed: int, rows: int = 7, scale: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((rows, HIDDEN)).astype(np.float32)
    logits = (scale * rng.standard_normal((rows, VOCAB))).astype(np.float32)
    logits[0, 5] += 25.0  # one near-one-hot row (entropy near 0)
    return hidden, logits


def export(features: str, directory: Path, seed: int = 0) -> tuple[AutoDecoHeads, Path]:
    torch.manual_seed(seed)
    module = AutoDecoHeads(HIDDEN, inner_size=INNER, temperature_features=features)
    with torch.no_grad():  # make the statistics' columns matter for T
        if features == STATS:
            module.temp_head.mlp[0].weight[:, HIDDEN:] *= 20.0
    export_heads(module.numpy_weights(), directory, base_model=identity(),
                 architecture=HeadArchitecture(temperature_hidden_size=INNER, top_p_hidden_size=INNER,
                                               temperature_features=features))
    return module, directory


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory) -> Path:
    return export(STATS, tmp_path_factory.mktemp("stats") / "heads")[1]


@pytest.fixture(scope="module")
def hidden_dir(tmp_path_factory) -> Path:
    return export("hidden", tmp_path_factory.mktemp("hidden") / "heads")[1]


def edit_manifest(directory: Path, change) -> None:
    data = json.loads((directory / MANIFEST_NAME).read_text())
    change(data)
    (directory / MANIFEST_NAME).write_text(json.dumps(data))


def copy(directory: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(directory, tmp_path / "copy"))


# -- the statistics -------------------------------------------------------------------------------


def test_torch_statistics_equal_numpy() -> None:
    _, logits = random_inputs(1)
    got = logit_statistics(torch.from_numpy(logits)).numpy()
    assert got.dtype == np.float32 and got.shape == (7, 2)
    np.testing.assert_allclose(got, numpy_stats(logits), rtol=1e-5, atol=1e-6)
    assert got[0, 0] > 0.99 and got[0, 1] < 0.05  # the near-one-hot row


def test_onnx_graph_statistics_equal_numpy(stats_dir: Path) -> None:
    import onnxruntime

    model = onnx.load(str(stats_dir / ONNX_NAME))
    for name in ("t_max_prob", "t_entropy"):  # expose the graph's own intermediate values
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden, logits = random_inputs(2)
    max_prob, entropy = session.run(["t_max_prob", "t_entropy"], {"hidden_states": hidden, "logits": logits})
    np.testing.assert_allclose(np.concatenate([max_prob, entropy], axis=1), numpy_stats(logits), rtol=1e-5, atol=1e-6)


# -- torch module == ONNX graph, both architectures --------------------------------------------------


@pytest.mark.parametrize("features", TEMPERATURE_FEATURES)
def test_torch_and_onnx_give_the_same_temperature_and_top_p(features: str, tmp_path: Path) -> None:
    module, directory = export(features, tmp_path / "heads", seed=3)
    heads = DecodingHeads.from_pretrained(directory)
    assert heads.manifest.heads.temperature_features == features
    for seed in (4, 5):
        hidden, logits = random_inputs(seed)
        with torch.no_grad():
            t_ref, p_ref = module(torch.from_numpy(hidden), torch.from_numpy(logits))
        t, p = heads.run(hidden, logits)
        np.testing.assert_allclose(t, t_ref.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(p, p_ref.numpy(), rtol=RTOL, atol=ATOL)
    # The statistics really feed T under the new features, and never under the reference ones.
    hidden, logits = random_inputs(6)
    t_sharp, _ = heads.run(hidden, logits * np.float32(3.0))
    moved = float(np.abs(t_sharp - heads.run(hidden, logits)[0]).max())
    assert (moved > 1e-3) if features == STATS else (moved == 0.0), moved


def test_the_stats_head_needs_logits_and_refuses_unknown_features() -> None:
    module = AutoDecoHeads(HIDDEN, inner_size=INNER, temperature_features=STATS)
    assert module.temp_head.mlp[0].in_features == HIDDEN + 2
    assert AutoDecoHeads(HIDDEN, inner_size=INNER).temp_head.mlp[0].in_features == HIDDEN
    with pytest.raises(ValueError, match="pass `logits`"):
        module.temp_head(torch.zeros(2, HIDDEN))
    with pytest.raises(ValueError, match="hidden, hidden\\+logit-stats, got 'logits'"):
        AutoDecoHeads(HIDDEN, temperature_features="logits")


# -- the manifest --------------------------------------------------------------------------------


def test_the_field_round_trips_and_needs_format_version_2(stats_dir: Path) -> None:
    text = (stats_dir / MANIFEST_NAME).read_text()
    data = json.loads(text)
    assert data["heads"]["temperature_features"] == STATS and data["format_version"] == 2
    manifest = HeadManifest.load(stats_dir / MANIFEST_NAME)
    assert manifest.heads.temperature_features == STATS
    assert manifest.to_json_text() == text  # byte-identical round trip


def test_the_default_is_omitted_and_keeps_format_version_1(hidden_dir: Path) -> None:
    text = (hidden_dir / MANIFEST_NAME).read_text()
    data = json.loads(text)
    assert "temperature_features" not in data["heads"] and data["format_version"] == 1
    manifest = HeadManifest.load(hidden_dir / MANIFEST_NAME)
    assert manifest.heads.temperature_features == "hidden"
    assert manifest.to_json_text() == text
    # Writing the default explicitly reads the same and is written without it again.
    edit_manifest(hidden_dir, lambda d: d["heads"].update(temperature_features="hidden"))
    assert HeadManifest.load(hidden_dir / MANIFEST_NAME).to_json_text() == text
    (hidden_dir / MANIFEST_NAME).write_text(text)


@pytest.mark.parametrize("value", ["hidden+entropy", "", 2, None])
def test_an_unknown_value_is_refused_naming_it_and_the_accepted_ones(stats_dir: Path, tmp_path: Path, value) -> None:
    directory = copy(stats_dir, tmp_path)
    edit_manifest(directory, lambda d: d["heads"].update(temperature_features=value))
    with pytest.raises(ManifestError) as caught:
        DecodingHeads.from_pretrained(directory)
    message = str(caught.value)
    assert f"unknown temperature_features {value!r}" in message, message
    assert "'hidden', 'hidden+logit-stats'" in message and "heads.temperature_features" in message


def test_the_new_features_under_format_version_1_are_refused(stats_dir: Path, tmp_path: Path) -> None:
    directory = copy(stats_dir, tmp_path)
    edit_manifest(directory, lambda d: d.update(format_version=1))
    with pytest.raises(ManifestError, match="needs format_version 2, but has format_version 1"):
        DecodingHeads.from_pretrained(directory)


# -- the load-time contract and probe follow the declared architecture -------------------------------


@pytest.mark.parametrize(("source", "declared", "width"), [("hidden", STATS, HIDDEN + 2), (STATS, "hidden", HIDDEN)])
def test_a_graph_of_the_other_architecture_is_refused(request, tmp_path: Path, source, declared, width) -> None:
    directory = copy(request.getfixturevalue("stats_dir" if source == STATS else "hidden_dir"), tmp_path)
    edit_manifest(directory, lambda d: (d["heads"].update(temperature_features=declared), d.update(format_version=2)))
    with pytest.raises(IntegrityError) as caught:
        DecodingHeads.from_pretrained(directory)
    message = str(caught.value)
    assert "the temperature head's first layer `temp_head.0.wT` has shape" in message, message
    assert f"heads.temperature_features {declared!r} with hidden size {HIDDEN} means {width} inputs" in message


def test_a_temperature_that_reads_logit_positions_is_refused_by_the_probe(stats_dir: Path, tmp_path: Path) -> None:
    directory = copy(stats_dir, tmp_path)
    model = onnx.load(str(directory / ONNX_NAME))
    ramp = numpy_helper.from_array(np.linspace(0.2, 3.0, VOCAB, dtype=np.float32), name="ramp")
    model.graph.initializer.append(ramp)
    softmax = next(node for node in model.graph.node if node.output[0] == "t_probs")
    softmax.input[0] = "ramped"
    model.graph.node.insert(0, helper.make_node("Mul", ["logits", "ramp"], ["ramped"]))
    (directory / ONNX_NAME).write_bytes(model.SerializeToString())
    edit_manifest(directory, lambda d: d["onnx"].update(sha256=sha256_file(directory / ONNX_NAME)))
    with pytest.raises(IntegrityError, match="changes when the vocabulary is only permuted"):
        DecodingHeads.from_pretrained(directory)


# -- the reference exporter cannot represent it ------------------------------------------------------


def test_export_reference_refuses_the_new_features(stats_dir: Path, tmp_path: Path) -> None:
    from deco_middleware.reference import export_reference

    with pytest.raises(ReferenceCheckpointError) as caught:
        export_reference(stats_dir, tmp_path / "ref")
    message = str(caught.value)
    assert "temperature_features='hidden+logit-stats'" in message and "hidden state alone" in message, message
    assert not (tmp_path / "ref").exists()


# -- training: `deco train fit` and `deco train outcome` ---------------------------------------------


def _assert_trained_stats_heads(directory: Path, cache) -> None:
    heads = DecodingHeads.from_pretrained(directory)
    assert heads.manifest.heads.temperature_features == STATS
    assert heads.manifest.training["hyperparameters"]["temperature_features"] == STATS
    hidden = torch.from_numpy(np.array(cache.hidden[:6], dtype=np.float32))
    logits = cache.logits(hidden).numpy()
    t, p = heads.run(hidden.numpy(), logits)
    assert np.isfinite(t).all() and np.isfinite(p).all()


@pytest.fixture(scope="module")
def rollout_cache_dir(tmp_path_factory) -> Path:
    """A real cache on disk (`deco train cache`) from a tiny Llama, with graded groups for the outcome objective."""
    from typer.testing import CliRunner

    from conftest import make_tiny_model, make_tiny_tokenizer
    from deco_middleware.cli.app import app

    root = tmp_path_factory.mktemp("train")
    model, tokenizer = make_tiny_model(seed=5), make_tiny_tokenizer()
    model.save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    lines = []
    torch.manual_seed(0)
    for group in range(6):  # draws really sampled at their recorded temperature (the behaviour policy)
        prompt = f"w{group} w{group + 1}"
        for k in range(4):
            temperature = (0.3, 1.0)[k % 2]
            inputs = tokenizer([prompt], return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                     max_new_tokens=4, min_new_tokens=4, pad_token_id=3)
            words = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            lines.append({"prompt": prompt, "completion": words, "truncated": True, "group": f"g{group}",
                          "reward": float(k % 2), "temperature": temperature, "count": 1})
    data = root / "rollouts.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "cache", "--data", str(data), "--out", str(root / "cache"),
                                      "--model", str(root / "tiny"), "--hidden-dtype", "float32"])
    assert result.exit_code == 0, result.output
    return root / "cache"


def test_deco_train_fit_with_logit_stats(rollout_cache_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app
    from deco_middleware.training import FeatureCache

    runner = CliRunner()
    result = runner.invoke(app, ["train", "fit", "--cache", str(rollout_cache_dir), "--out", str(tmp_path / "heads"),
                                 "--work-dir", str(tmp_path / "fit"), "--lr", "0.01", "--batch-tokens", "16",
                                 "--max-steps", "3", "--temperature-features", STATS])
    assert result.exit_code == 0, result.output
    _assert_trained_stats_heads(tmp_path / "heads", FeatureCache.open(rollout_cache_dir))
    assert "--temperature-features" in DecodingHeads.from_pretrained(tmp_path / "heads").manifest.training["command"]["fit"]
    result = runner.invoke(app, ["train", "fit", "--cache", str(rollout_cache_dir), "--out", str(tmp_path / "bad"),
                                 "--work-dir", str(tmp_path / "fit2"), "--max-steps", "1",
                                 "--temperature-features", "logits"])
    assert result.exit_code == 2 and "hidden, hidden+logit-stats, got 'logits'" in " ".join(result.output.split())


def test_deco_train_outcome_with_logit_stats(rollout_cache_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app
    from deco_middleware.training import FeatureCache

    result = CliRunner().invoke(app, ["train", "outcome", "--cache", str(rollout_cache_dir), "--out",
                                      str(tmp_path / "heads"), "--max-steps", "3", "--validation-fraction", "0",
                                      "--temperature-features", STATS])
    assert result.exit_code == 0, result.output
    _assert_trained_stats_heads(tmp_path / "heads", FeatureCache.open(rollout_cache_dir))


def test_training_the_stats_head_moves_the_statistics_weights_and_matches_onnx(rollout_cache_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """fit() trains the H+2-wide first layer (the statistics' columns get gradients) and the export computes
    the trained module's T and P."""
    from deco_middleware.training import FeatureCache, TrainConfig, export_trained_heads, fit

    cache = FeatureCache.open(rollout_cache_dir)
    config = TrainConfig(learning_rate=1e-2, batch_tokens=16, max_steps=4, inner_size=16, validation_fraction=0.0,
                         temperature_features=STATS)
    torch.manual_seed(config.seed)
    initial = AutoDecoHeads(cache.hidden.shape[1], inner_size=16, temperature_features=STATS).state_dict()
    result = fit(cache, config, progress=False)
    trained = result.heads.state_dict()["temp_head.mlp.0.weight"]
    assert trained.shape[1] == cache.hidden.shape[1] + 2
    assert not torch.equal(trained[:, -2:], initial["temp_head.mlp.0.weight"][:, -2:])
    export_trained_heads(result, cache, config, tmp_path / "heads", command="test")
    heads = DecodingHeads.from_pretrained(tmp_path / "heads")
    hidden = torch.from_numpy(np.array(cache.hidden[:8], dtype=np.float32))
    logits = cache.logits(hidden)
    with torch.no_grad():
        t_ref, p_ref = result.heads(hidden, logits)
    t, p = heads.run(hidden.numpy(), logits.numpy())
    np.testing.assert_allclose(t, t_ref.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(p, p_ref.numpy(), rtol=RTOL, atol=ATOL)


def test_torch_heads_built_from_a_logit_stats_artifact_equal_onnx_runtime(stats_dir: Path) -> None:
    """The vLLM plugin's torch heads (built from the ONNX initializers) follow the declared architecture."""
    from deco_middleware.heads.torch_artifact import torch_heads_from_artifact

    heads = DecodingHeads.from_pretrained(stats_dir)
    module = torch_heads_from_artifact(heads)
    assert module.temperature_features == STATS
    hidden, logits = random_inputs(3)
    ort_t, ort_p = heads.run(hidden, logits)
    with torch.no_grad():
        t, p = module(torch.from_numpy(hidden), torch.from_numpy(logits))
    np.testing.assert_allclose(t.numpy(), ort_t, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(p.numpy(), ort_p, rtol=RTOL, atol=ATOL)
