"""Training pipeline on a tiny in-memory Llama and synthetic data: loss, cache, trainer, export."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import make_tiny_model, make_tiny_tokenizer  # noqa: E402

from deco_middleware import DecodingHeads  # noqa: E402
from deco_middleware.heads.modules import AutoDecoHeads  # noqa: E402
from deco_middleware.training import (  # noqa: E402
    CacheError,
    FeatureCache,
    LossConfig,
    TrainConfig,
    TrainingDataError,
    TrainingInterrupted,
    autodeco_loss,
    build_cache,
    export_trained_heads,
    fit,
    hard_nucleus,
    hard_nucleus_from_logits,
    read_jsonl,
    soft_top_p_label_probability,
    soft_top_p_label_probability_windowed,
)

# --------------------------------------------------------------------------- loss


def _random_batch(batch: int = 6, hidden: int = 16, vocab: int = 40, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, hidden, generator=generator)
    logits = torch.randn(batch, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (batch,), generator=generator)
    return h, logits, labels


def test_soft_top_p_approaches_the_hard_nucleus_as_steepness_grows():
    torch.manual_seed(0)
    logits = torch.randn(3, 30) * 2
    temperature = torch.tensor([0.7, 1.0, 1.3])
    sorted_logits, _ = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits / temperature[:, None], dim=-1)
    cumulative = probs.cumsum(-1)
    # P halfway between two cumulative masses, so no token sits on the boundary.
    top_p = (cumulative[:, 4] + cumulative[:, 5]) / 2
    # The hard limit of the soft mask keeps the tokens whose inclusive mass is <= P (the crossing
    # token's partial weight exp(-alpha * (c - P)) vanishes as alpha grows).
    inside = (cumulative <= top_p[:, None]).float()
    hard = probs * inside / (probs * inside).sum(-1, keepdim=True)
    errors = []
    for steepness in (3.0, 30.0, 300.0, 3000.0):
        soft = torch.stack(
            [soft_top_p_label_probability(sorted_logits, torch.full((3,), rank), temperature, top_p, steepness)
             for rank in range(30)], dim=-1)
        errors.append(float((soft - hard).abs().max()))
    assert errors == sorted(errors, reverse=True) and errors[0] > 10 * errors[-1]
    assert errors[-1] < 1e-3


def _peaked_logits(batch: int = 8, vocab: int = 3000, seed: int = 0):
    """LM-like logits: a few likely tokens over a long flat tail."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=generator)
    logits[:, :20] += torch.rand(batch, 20, generator=generator) * 12
    labels = torch.randint(0, 40, (batch,), generator=generator)
    return logits, labels


@pytest.mark.parametrize(("temperature", "top_p"), [(0.5, 0.5), (1.0, 0.9), (1.8, 0.95), (1.0, 1.0), (0.7, 0.2)])
def test_windowed_soft_top_p_equals_the_sorted_reference(temperature, top_p):
    logits, labels = _peaked_logits()
    t, p = torch.full((8,), temperature), torch.full((8,), top_p)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = (order == labels[:, None]).int().argmax(dim=-1)
    exact = soft_top_p_label_probability(sorted_logits, rank, t, p, 30.0)
    # No window (full sort) and a window as wide as the vocabulary: the same loss, float32 noise only.
    for window in (None, logits.shape[-1]):
        torch.testing.assert_close(soft_top_p_label_probability_windowed(logits, labels, t, p, 30.0, window), exact,
                                   rtol=1e-4, atol=1e-6)
    # A narrow window integrates the tail: off by at most the largest tail probability, relatively.
    probs = torch.softmax(sorted_logits / t[:, None], dim=-1)
    bound = float(probs[:, 64].max())
    windowed = soft_top_p_label_probability_windowed(logits, labels, t, p, 30.0, 64)
    assert float(((windowed - exact).abs() / exact.clamp(min=1e-12)).max()) <= bound + 1e-4


def test_windowed_soft_top_p_gradients_reach_temperature_and_top_p():
    logits, labels = _peaked_logits()
    t = torch.full((8,), 0.8, requires_grad=True)
    p = torch.full((8,), 0.7, requires_grad=True)
    soft_top_p_label_probability_windowed(logits, labels, t, p, 30.0, 64).log().sum().backward()
    assert t.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


def test_hard_nucleus_without_sorting_equals_the_sorted_rule():
    logits, labels = _peaked_logits(batch=12)
    generator = torch.Generator().manual_seed(3)
    t = 0.3 + 1.5 * torch.rand(12, generator=generator)
    p = torch.rand(12, generator=generator)
    # Wide nuclei (flat, hot rows): wider than the window, resolved by the full sort. (Not P = 1:
    # there the float32 mass before the last tokens is 1 +- 1e-7 and either rule may stop anywhere.)
    t[:3], p[:3] = 1.8, 0.99
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = (order == labels[:, None]).int().argmax(dim=-1)
    inside, size = hard_nucleus(sorted_logits, rank, t, p)
    inside_w, size_w = hard_nucleus_from_logits(logits, labels, t, p, window=64)
    assert torch.equal(inside, inside_w)
    # Cumulative sums in a different order can flip a token sitting exactly on P: allow one token.
    assert int((size - size_w).abs().max()) <= 1 and int(size_w[:3].min()) > 64


def test_gradients_reach_both_heads_and_top_p_loss_reaches_the_temperature_head():
    h, logits, labels = _random_batch()
    torch.manual_seed(1)
    heads = AutoDecoHeads(16, inner_size=8)
    out = autodeco_loss(heads, h, logits, labels, LossConfig(easy_token_drop=0.0))
    out.total.backward()
    for name, parameter in heads.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    heads.zero_grad()
    out = autodeco_loss(heads, h, logits, labels, LossConfig(easy_token_drop=0.0))
    out.top_p_loss.backward()  # the top-p loss alone: reaches T through the features and softmax(l/T)
    assert heads.temp_head.mlp[0].weight.grad.abs().sum() > 0

    heads.zero_grad()
    config = LossConfig(easy_token_drop=0.0, top_p_grad_to_temperature=False)
    autodeco_loss(heads, h, logits, labels, config).top_p_loss.backward()
    assert heads.temp_head.mlp[0].weight.grad is None or heads.temp_head.mlp[0].weight.grad.abs().sum() == 0


def test_per_token_weight_is_detached():
    h, logits, labels = _random_batch()
    torch.manual_seed(2)
    heads = AutoDecoHeads(16, inner_size=8)
    config = LossConfig(heads="temperature", easy_token_drop=0.0)
    live = logits.clone().requires_grad_(True)
    autodeco_loss(heads, h, live, labels, config).total.backward()

    # Reference: the same loss with the weight computed from a detached copy of the logits.
    reference_logits = logits.clone().requires_grad_(True)
    weight = torch.softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    temperature = heads.temp_head(h).detach()
    ce = -torch.log_softmax(reference_logits / temperature[:, None], -1).gather(-1, labels[:, None]).squeeze(-1)
    ((ce * weight).sum() / len(labels)).backward()
    torch.testing.assert_close(live.grad, reference_logits.grad)


def test_weighting_and_masking_can_be_switched_off():
    h, logits, labels = _random_batch()
    heads = AutoDecoHeads(16, inner_size=8)
    plain = LossConfig(heads="temperature", weight_by_label_probability=False, easy_token_drop=0.0)
    out = autodeco_loss(heads, h, logits, labels, plain)
    temperature = heads.temp_head(h)
    expected = torch.nn.functional.cross_entropy(logits / temperature[:, None], labels)
    torch.testing.assert_close(out.total, expected)
    assert out.kept_tokens == len(labels)
    # With dropping on, only easy tokens (label == argmax) can be dropped.
    easy_labels = logits.argmax(-1)
    dropped = autodeco_loss(heads, h, logits, easy_labels, LossConfig(easy_token_drop=0.99),
                            generator=torch.Generator().manual_seed(0))
    assert dropped.kept_tokens < len(labels)
    hard_labels = (easy_labels + 1) % logits.shape[-1]
    kept = autodeco_loss(heads, h, logits, hard_labels, LossConfig(easy_token_drop=0.99),
                         generator=torch.Generator().manual_seed(0))
    assert kept.kept_tokens == len(labels)


def test_loss_options_are_validated():
    with pytest.raises(ValueError, match="`heads`"):
        LossConfig(heads="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`easy_token_drop`"):
        LossConfig(easy_token_drop=1.0)
    with pytest.raises(ValueError, match="`soft_top_p_window`"):
        LossConfig(soft_top_p_window=0)


# --------------------------------------------------------------------------- data and cache


@pytest.fixture(scope="module")
def tiny_fp32():
    return make_tiny_model(seed=3), make_tiny_tokenizer()


def _sampled_records(model, tokenizer, count: int = 24, seed: int = 0) -> list[dict]:
    """Completions sampled from the tiny model itself at T=0.5, so a lower temperature fits them."""
    rng = np.random.default_rng(seed)
    prompts = [" ".join(f"w{i}" for i in rng.integers(0, 120, size=rng.integers(2, 6))) for _ in range(count)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=True, temperature=0.5, top_k=0, top_p=1.0, max_new_tokens=12,
                             min_new_tokens=12, pad_token_id=3)
    completions = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [{"prompt": p, "completion": c, "truncated": True} for p, c in zip(prompts, completions) if c.strip()]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, tiny_fp32) -> FeatureCache:
    model, tokenizer = tiny_fp32
    records = _sampled_records(model, tokenizer)
    return build_cache(model, tokenizer, records, tmp_path_factory.mktemp("c") / "cache", hidden_dtype="float32",
                       batch_size=5, progress=False)


def test_cached_logits_equal_a_direct_forward_pass(tiny_fp32, tiny_cache):
    model, tokenizer = tiny_fp32
    # One record's completion tokens, recomputed from the cache vs the model's own forward pass.
    record_index = int(tiny_cache.sequence[0])
    record_rows = np.flatnonzero(np.asarray(tiny_cache.sequence) == record_index)
    hidden = torch.from_numpy(np.asarray(tiny_cache.hidden[record_rows], dtype=np.float32))
    cached = tiny_cache.logits(hidden)
    labels = torch.from_numpy(np.asarray(tiny_cache.labels[record_rows]))
    records = _sampled_records(model, tokenizer)
    prompt_ids = tokenizer(records[record_index]["prompt"])["input_ids"]
    ids = torch.tensor([prompt_ids + labels.tolist()])
    with torch.no_grad():
        direct = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    # float32 hidden states and float32 recomputation: equal up to matmul summation order.
    torch.testing.assert_close(cached, direct, atol=1e-4, rtol=1e-4)
    assert tiny_cache.meta["verify"]["max_abs_logit_diff"] < 1e-4


def test_float16_cache_is_within_its_stated_tolerance(tmp_path, tiny_fp32):
    model, tokenizer = tiny_fp32
    records = _sampled_records(model, tokenizer, count=4)
    cache = build_cache(model, tokenizer, records, tmp_path / "c16", hidden_dtype="float16", progress=False)
    assert cache.hidden.dtype == np.float16
    # float16 keeps 11 significant bits: logits within 1e-2 relative of the largest logit.
    assert cache.meta["verify"]["max_abs_logit_diff"] <= 1e-2 * cache.meta["verify"]["max_abs_logit"]


def test_cache_is_written_atomically_and_refuses_data_without_completion_tokens(tmp_path, tiny_fp32):
    model, tokenizer = tiny_fp32
    records = [{"prompt": "w1 w2 w3", "completion": "w4 w5"}]
    with pytest.raises(CacheError, match="no usable completion tokens"):
        build_cache(model, tokenizer, records, tmp_path / "cache", max_length=3, progress=False)
    assert list(tmp_path.iterdir()) == []  # no half-written cache, no temporary folder left behind
    with pytest.raises(CacheError, match="deco train cache"):
        FeatureCache.open(tmp_path / "cache")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "completion": "b"}', "{not json"], "line 2: not valid JSON"),
        (['{"prompt": "a"}'], "line 1: `completion` must be a string, but it is missing"),
        (['{"prompt": "a", "completion": 3}'], "line 1: `completion` must be a string, but it is a int"),
        (['["a", "b"]'], "line 1 must be a JSON object"),
        (['{"prompt": "a", "completion": "  "}'], "line 1: `completion` is empty"),
        (['{"prompt": 3, "completion": "b"}'], "line 1: `prompt` must be a string .* or a list of .* it is a int"),
        (['{"prompt": [{"role": "user"}], "completion": "b"}'], "line 1: `prompt` is a list, so it must be chat messages"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, lines, message):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match=message):
        read_jsonl(path)


def test_training_jsonl_prompt_may_be_chat_messages(tmp_path):
    path = tmp_path / "data.jsonl"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}]
    path.write_text(json.dumps({"prompt": messages, "completion": "b"}) + "\n", encoding="utf-8")
    assert read_jsonl(path)[0]["prompt"] == messages


def test_training_jsonl_follows_the_shared_reader_rules(tmp_path):
    # One reader for every JSONL file (deco_middleware.jsonl): blank lines are skipped (they used to
    # fail here while task files skipped them), a byte-order mark is accepted, bad UTF-8 names the line.
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n\n  \n{"prompt": "c", "completion": "d"}\n')
    assert [r["prompt"] for r in read_jsonl(path)] == ["a", "c"]
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(TrainingDataError, match=r"data.jsonl, line 2: not valid UTF-8 \(byte 0xff at column 13\)"):
        read_jsonl(path)


def test_empty_jsonl_file_fails(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(TrainingDataError, match="holds no records"):
        read_jsonl(path)


# --------------------------------------------------------------------------- trainer


def _config(**changes) -> TrainConfig:
    base = dict(learning_rate=3e-3, batch_tokens=32, epochs=4, seed=0, validation_fraction=0.25,
                checkpoint_every=3, inner_size=16)
    return TrainConfig(**{**base, **changes})


def _state(heads) -> dict:
    return {k: v.clone() for k, v in heads.state_dict().items()}


def test_training_lowers_the_validation_loss(tiny_cache):
    result = fit(tiny_cache, _config(epochs=2), progress=False)
    assert result.validation["loss"] < result.validation_before["loss"]
    # The data were sampled at T=0.5: with the plain temperature cross-entropy the head moves
    # down from its initial ~1 towards it.
    plain = LossConfig(heads="temperature", weight_by_label_probability=False, easy_token_drop=0.0)
    plain_result = fit(tiny_cache, _config(epochs=2, loss=plain), progress=False)
    assert plain_result.validation["loss"] < plain_result.validation_before["loss"]
    assert plain_result.validation["temperature_mean"] < plain_result.validation_before["temperature_mean"]
    for key in ("temperature_std", "top_p_mean", "top_p_std", "label_in_nucleus", "nucleus_size_mean"):
        assert key in result.validation


def test_same_seed_gives_the_same_heads(tiny_cache):
    first = fit(tiny_cache, _config(max_steps=5), progress=False)
    second = fit(tiny_cache, _config(max_steps=5), progress=False)
    other = fit(tiny_cache, _config(max_steps=5, seed=1), progress=False)
    for key, value in _state(first.heads).items():
        assert torch.equal(value, second.heads.state_dict()[key]), key
    assert any(not torch.equal(v, other.heads.state_dict()[k]) for k, v in _state(first.heads).items())


def test_resumed_run_equals_an_uninterrupted_one(tiny_cache, tmp_path):
    config = _config(max_steps=10)
    uninterrupted = fit(tiny_cache, config, work_dir=tmp_path / "a", progress=False)
    with pytest.raises(TrainingInterrupted):
        fit(tiny_cache, config, work_dir=tmp_path / "b", stop_after=4, progress=False)
    resumed = fit(tiny_cache, config, work_dir=tmp_path / "b", progress=False)
    assert resumed.steps == uninterrupted.steps == 10
    for key, value in uninterrupted.heads.state_dict().items():
        assert torch.equal(value, resumed.heads.state_dict()[key]), key
    assert resumed.history == uninterrupted.history
    with pytest.raises(ValueError, match="different settings"):
        fit(tiny_cache, _config(max_steps=10, learning_rate=1e-2), work_dir=tmp_path / "b", progress=False)


def test_temperature_only_training_leaves_top_p_untouched_and_exports_as_such(tiny_cache, tmp_path):
    config = _config(max_steps=4, loss=LossConfig(heads="temperature"))
    torch.manual_seed(config.seed)
    initial = AutoDecoHeads(tiny_cache.hidden.shape[1], inner_size=config.inner_size).state_dict()
    result = fit(tiny_cache, config, progress=False)
    for key, value in result.heads.state_dict().items():
        if key.startswith("top_p_head"):
            assert torch.equal(value, initial[key]), key
    export_trained_heads(result, tiny_cache, config, tmp_path / "heads", command="test")
    heads = DecodingHeads.from_pretrained(tmp_path / "heads")
    assert heads.trained_heads == ("temperature",)
    record = heads.manifest.training
    assert record["hyperparameters"]["loss"]["heads"] == "temperature"
    assert record["validation"]["loss"] == result.validation["loss"]
    assert record["stages"]["fit"]["steps"] == 4 and record["command"] == "test"
    # The ONNX heads compute what the trained torch heads compute.
    hidden = torch.from_numpy(np.array(tiny_cache.hidden[:5], dtype=np.float32))
    logits = tiny_cache.logits(hidden)
    temperature, _ = heads.run(hidden.numpy(), logits.numpy())
    np.testing.assert_allclose(temperature, result.heads.temp_head(hidden).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_no_training_tokens_fails_before_training(tmp_path, tiny_fp32):
    model, tokenizer = tiny_fp32
    cache = build_cache(model, tokenizer, [{"prompt": "w1", "completion": "w2"}], tmp_path / "one", progress=False)
    # A single record goes to training (never all to validation); asking for a split of one
    # record still leaves it for training, and an empty training part is refused with advice.
    result = fit(cache, _config(max_steps=1), progress=False)
    assert result.train_tokens == cache.tokens
    json.loads((tmp_path / "one" / "meta.json").read_text())
