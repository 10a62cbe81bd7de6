"""The batched sampling engine draws exactly what generate() with the same processors and seeds draws.

generate() here runs the HF-compatible processors of the harness (and the learned pair of
``LearnedDecoding``) followed by ``PerRowSampler`` with the engine's per-row seeds; the engine shares
prefills and drops finished rows, which must not change a single token.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from deco_middleware.engine import (  # noqa: E402
    EngineStats,
    EntropyTemperature,
    Greedy,
    Learned,
    Static,
    derive_seed,
    iter_sample,
    sample,
)
from reference_processors import (  # noqa: E402
    EntropyTemperatureProcessor,
    PerRowSampler,
    StaticDecodingProcessor,
)
from deco_middleware.hf import LearnedDecoding  # noqa: E402
from deco_middleware.sampling import DecodingSettings  # noqa: E402

# Different lengths, so prefill pads; the tiny model has no chat template.
PROMPTS = ["w1 w2 w3 w4 w5", "w7 w8", "w9 w10 w11", "w12"]
SAMPLES = 3
NEW_TOKENS = 12
EOS = 2


def _seeds(seed: int = 5) -> list[list[int]]:
    return [[derive_seed(seed, i, k) for k in range(SAMPLES)] for i in range(len(PROMPTS))]


def _generate_reference(model, tokenizer, processors_for_rows, seeds):
    """generate() on every (prompt, sample) row, up to and including the first EOS (the EOS rule)."""
    prompts = [p for p in PROMPTS for _ in range(SAMPLES)]
    flat = [s for row in seeds for s in row]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    processors = [*processors_for_rows(), PerRowSampler(flat)]
    out = model.generate(
        **inputs, logits_processor=transformers.LogitsProcessorList(processors), max_new_tokens=NEW_TOKENS,
        do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=3,
    )
    rows = []
    for ids in out[:, inputs["input_ids"].shape[1]:].tolist():
        rows.append(ids[: ids.index(EOS) + 1] if EOS in ids else ids)
    return [rows[i * SAMPLES:(i + 1) * SAMPLES] for i in range(len(PROMPTS))]


def _engine_tokens(model, tokenizer, policy, seeds, **kwargs):
    completions = sample(model, tokenizer, PROMPTS, policy=policy, samples=SAMPLES, seeds=seeds,
                         max_new_tokens=NEW_TOKENS, **kwargs)
    return [[c.token_ids for c in row] for row in completions], completions


@pytest.mark.parametrize("max_rows", [1, 4, 64])
def test_static_matches_generate_with_the_same_seeds(tiny_model, tiny_tokenizer, max_rows):
    seeds = _seeds()
    expected = _generate_reference(tiny_model, tiny_tokenizer, lambda: [StaticDecodingProcessor(0.8, 0.9)], seeds)
    got, completions = _engine_tokens(tiny_model, tiny_tokenizer, Static(0.8, 0.9), seeds, max_rows=max_rows)
    assert got == expected
    for row in completions:
        for c in row:
            assert len(c.temperatures) == len(c.top_ps) == c.length
            assert set(c.temperatures) == {0.8} and set(c.top_ps) == {0.9}


def test_greedy_matches_generate(tiny_model, tiny_tokenizer):
    inputs = tiny_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    out = tiny_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=3)
    expected = []
    for ids in out[:, inputs["input_ids"].shape[1]:].tolist():
        expected.append(ids[: ids.index(EOS) + 1] if EOS in ids else ids)
    completions = sample(tiny_model, tiny_tokenizer, PROMPTS, policy=Greedy(), max_new_tokens=NEW_TOKENS, max_rows=2)
    assert [row[0].token_ids for row in completions] == expected
    assert all(set(row[0].temperatures) <= {0.0} for row in completions)


def test_entropy_temperature_matches_generate(tiny_model, tiny_tokenizer):
    seeds = _seeds(7)
    expected = _generate_reference(tiny_model, tiny_tokenizer, lambda: [EntropyTemperatureProcessor(1.0, 0.8, 1.0)], seeds)
    got, completions = _engine_tokens(tiny_model, tiny_tokenizer, EntropyTemperature(1.0, 0.8, 1.0), seeds, max_rows=5)
    assert got == expected
    temperatures = [t for row in completions for c in row for t in c.temperatures]
    assert min(temperatures) >= 0.05 and max(temperatures) <= 1.0 and len(set(temperatures)) > 1


@pytest.mark.parametrize("settings", [DecodingSettings(), DecodingSettings(use_top_p_head=False),
                                      DecodingSettings(use_temperature_head=False, top_p_scale=0.9)])
def test_learned_matches_the_generate_integration(tiny_model, tiny_tokenizer, tiny_heads, settings):
    seeds = _seeds(11)
    sessions = []

    def processors():
        learned = LearnedDecoding(tiny_heads, record_trace=False, **{
            name: getattr(settings, name) for name in ("use_temperature_head", "use_top_p_head", "top_p_scale")
        })
        # The pair draws the token itself: give it the engine's per-row seeds.
        session = learned.attach(tiny_model, row_seeds=[s for row in seeds for s in row])
        sessions.append(session.__enter__())
        return list(session.logits_processor)

    try:
        expected = _generate_reference(tiny_model, tiny_tokenizer, processors, seeds)
    finally:
        for session in sessions:
            session.__exit__(None, None, None)
    stats = EngineStats()
    got, completions = _engine_tokens(tiny_model, tiny_tokenizer, Learned(tiny_heads, settings), seeds, max_rows=4,
                                      stats=stats)
    assert got == expected
    applied_t = {t for row in completions for c in row for t in c.temperatures}
    applied_p = {p for row in completions for c in row for p in c.top_ps}
    assert (applied_t == {1.0}) == (not settings.use_temperature_head)
    assert (applied_p == {1.0}) == (not settings.use_top_p_head)
    assert stats.fallback_rows == 0
    assert stats.generated_tokens == sum(c.length for row in completions for c in row) == stats.row_steps


def test_shared_prefill_and_dropped_rows_save_work(tiny_model, tiny_tokenizer):
    stats = EngineStats()
    completions = sample(tiny_model, tiny_tokenizer, PROMPTS, policy=Static(1.5), samples=SAMPLES, seed=0,
                         max_new_tokens=NEW_TOKENS, stats=stats)
    prompt_tokens = sum(len(tiny_tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert stats.prompt_tokens == prompt_tokens  # once per prompt, not once per sample
    # Rows that ended are not computed any more: row-steps equal the generated tokens.
    assert stats.row_steps == sum(c.length for row in completions for c in row)


def test_results_do_not_depend_on_grouping_or_order(tiny_model, tiny_tokenizer):
    seeds = _seeds(3)
    one, _ = _engine_tokens(tiny_model, tiny_tokenizer, Static(1.2, 0.95), seeds, max_rows=1)
    many, _ = _engine_tokens(tiny_model, tiny_tokenizer, Static(1.2, 0.95), seeds, max_rows=100)
    assert one == many
    streamed = dict(iter_sample(tiny_model, tiny_tokenizer, PROMPTS, policy=Static(1.2, 0.95), samples=SAMPLES,
                                seeds=seeds, max_new_tokens=NEW_TOKENS, max_rows=SAMPLES))
    assert sorted(streamed) == list(range(len(PROMPTS)))
    assert [[c.token_ids for c in streamed[i]] for i in range(len(PROMPTS))] == one


def test_bad_arguments_name_the_value(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="`samples` has to be a positive integer, got 0"):
        sample(tiny_model, tiny_tokenizer, PROMPTS, policy=Greedy(), samples=0)
    with pytest.raises(ValueError, match="`seeds` must hold 2 seed"):
        sample(tiny_model, tiny_tokenizer, PROMPTS, policy=Static(1.0), samples=2, seeds=[[1, 2]])
    with pytest.raises(ValueError, match="needs heads"):
        sample(tiny_model, tiny_tokenizer, PROMPTS, policy=Learned(None))
    with pytest.raises(ValueError, match="use Greedy"):
        Static(0.0)
    with pytest.raises(ValueError, match=r"`top_p` has to be in \(0, 1\], got 1.5"):
        Static(0.7, 1.5)
    with pytest.raises(TypeError, match="Unknown decoding policy"):
        sample(tiny_model, tiny_tokenizer, PROMPTS, policy="hot")
    assert sample(tiny_model, tiny_tokenizer, [], policy=Greedy()) == []
