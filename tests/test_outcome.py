"""The outcome-driven objective (training/outcome.py) and steering (steering.py), issues #12 and #13.

Synthetic feature caches (random hidden states, a random LM head) are built in memory: the
objective only ever sees ``h``, ``W`` and labels, so this is the real code path without the LM.
The one test that needs a forward pass uses a tiny random Llama with the default model's real
tokenizer (skipped when the default model is not provisioned).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deco_middleware import steering  # noqa: E402
from deco_middleware.training.cache import FeatureCache  # noqa: E402
from deco_middleware.training.outcome import (  # noqa: E402
    OutcomeConfig,
    behaviour_log_prob,
    fit_outcome,
    group_advantages,
    group_loss,
    plan_outcome_data,
    ppo_surrogate,
    ranking_loss,
    shaped_rewards,
    steer_loss,
    trajectory_log_prob,
)
from deco_middleware.training.rollouts import RESERVED_TASKS, ROLLOUT_TASKS, RolloutConfig, add_steer_pairs  # noqa: E402
from deco_middleware.training.data import TrainingDataError  # noqa: E402


def _memory_cache(info: list[dict], lengths: list[int], hidden: np.ndarray, labels: np.ndarray, lm_head: np.ndarray
                  ) -> FeatureCache:
    sequence = np.concatenate([np.full(n, i, dtype=np.int32) for i, n in enumerate(lengths)])
    return FeatureCache(Path("in-memory"), hidden.astype(np.float32), labels.astype(np.int64), sequence,
                        lm_head.astype(np.float32), None, {"record_info": info})


def _rollout_cache(seed: int = 0, groups: int = 24, per_group: int = 4, length: int = 6, hidden_size: int = 16,
                   vocab: int = 40) -> FeatureCache:
    """Groups of draws at T 0.3 / 1.0 whose reward depends on the tokens: a learnable signal."""
    rng = np.random.default_rng(seed)
    lm_head = rng.normal(size=(vocab, hidden_size))
    info, lengths, hidden, labels = [], [], [], []
    for g in range(groups):
        for k in range(per_group):
            h = rng.normal(size=(length, hidden_size))
            logits = h @ lm_head.T
            temperature = (0.3, 1.0)[k % 2]
            probs = np.exp(logits / temperature - (logits / temperature).max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            y = np.array([rng.choice(vocab, p=p) for p in probs])
            reward = float((y == logits.argmax(1)).mean() > 0.5)  # right when it mostly follows the argmax
            info.append({"group": f"g{g}", "reward": reward, "temperature": temperature, "count": 1})
            lengths.append(length)
            hidden.append(h)
            labels.append(y)
    return _memory_cache(info, lengths, np.concatenate(hidden), np.concatenate(labels), lm_head)


# -- off-policy log-probabilities ------------------------------------------------------------------


def test_behaviour_log_prob_is_the_log_softmax_at_the_behaviour_temperature() -> None:
    logits = torch.randn(5, 30)
    labels = torch.randint(0, 30, (5,))
    t = torch.tensor([0.3, 0.6, 1.0, 1.5, 0.7])
    expected = torch.log_softmax(logits / t[:, None], dim=-1).gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(behaviour_log_prob(logits, labels, t), expected, atol=1e-6)
    # At P = 1 the sampler's rule is the plain softmax: both functions agree.
    assert torch.allclose(trajectory_log_prob(logits, labels, t, torch.ones(5)), expected, atol=1e-5)


def test_trajectory_log_prob_applies_the_nucleus_and_refuses_tokens_outside_it() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    at_p = lambda y, p: float(trajectory_log_prob(logits, torch.tensor([y]), torch.ones(1), torch.tensor([p])))  # noqa: E731
    assert at_p(0, 0.7) == pytest.approx(np.log(0.5 / 0.8), abs=1e-6)  # nucleus {0, 1}
    assert at_p(2, 0.7) == -np.inf
    assert at_p(0, 0.1) == pytest.approx(0.0, abs=1e-6)  # the most likely token is always kept


@pytest.fixture(scope="module")
def tiny_lm():
    transformers = pytest.importorskip("transformers")
    import os

    from deco_middleware.compat import load_tokenizer
    from deco_middleware.default_model import ensure_default_model

    if os.environ.get("DECO_SKIP_MODEL_TESTS"):
        pytest.skip("DECO_SKIP_MODEL_TESTS is set")
    tokenizer = load_tokenizer(ensure_default_model())  # the real tokenizer (provisioned on first use)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    return model, tokenizer


def test_off_policy_log_prob_from_the_cache_equals_a_direct_forward_pass(tiny_lm, tmp_path: Path) -> None:
    """Tolerance: 1e-4 nats per token (float32 logits recomputed as h @ W^T vs the model's own)."""
    from deco_middleware.sampling import nucleus_filter, warp_temperature
    from deco_middleware.training.cache import build_cache, tokenize_record

    model, tokenizer = tiny_lm
    rng = np.random.default_rng(3)
    records = [{"prompt": "What is 2 + 3?", "completion": "x", "completion_ids": [int(i) for i in rng.integers(0, 2000, 9)]},
               {"prompt": "Spell cat backward.", "completion": "x", "completion_ids": [int(i) for i in rng.integers(0, 2000, 5)]}]
    cache = build_cache(model, tokenizer, records, tmp_path / "cache", progress=False)
    for index, record in enumerate(records):
        rows = np.flatnonzero(np.asarray(cache.sequence) == index)
        hidden = torch.from_numpy(np.asarray(cache.hidden[rows]))
        labels = torch.from_numpy(np.asarray(cache.labels[rows]))
        n = len(rows)
        temperature = torch.linspace(0.4, 1.6, n)
        top_p = torch.linspace(0.999, 0.9, n)
        off_policy = trajectory_log_prob(cache.logits(hidden), labels, temperature, top_p)

        prompt_ids, completion_ids = tokenize_record(tokenizer, record)
        assert completion_ids == record["completion_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + completion_ids])).logits[0].float()
        direct_logits = logits[len(prompt_ids) - 1: len(prompt_ids) - 1 + n]
        scores, _ = nucleus_filter(warp_temperature(direct_logits, temperature), top_p)
        direct = torch.log_softmax(scores, dim=-1).gather(1, labels[:, None]).squeeze(1)
        finite = torch.isfinite(direct)
        assert torch.equal(finite, torch.isfinite(off_policy))
        assert torch.allclose(off_policy[finite], direct[finite], atol=1e-4)
        # The trajectory's log-probability is the sum over its tokens.
        assert float(off_policy[finite].sum()) == pytest.approx(float(direct[finite].sum()), abs=1e-3)


# -- the objective ----------------------------------------------------------------------------------


def test_group_advantages_are_normalised_and_count_duplicates() -> None:
    a = group_advantages(np.array([1.0, 0.0]), np.array([1.0, 3.0]))
    # mean 0.25, std sqrt(0.1875)
    assert a == pytest.approx([0.75 / np.sqrt(0.1875), -0.25 / np.sqrt(0.1875)], rel=1e-4)
    assert shaped_rewards(np.array([1.0, 0.0, 0.0, 0.0]), np.ones(4), 2.0) == pytest.approx([2.5, 0, 0, 0])


def test_ppo_surrogate_clips_in_the_direction_of_the_advantage() -> None:
    log_prob = torch.tensor([np.log(2.0), np.log(2.0), np.log(0.5)], requires_grad=True)
    loss = ppo_surrogate(log_prob, torch.zeros(3), torch.tensor([1.0, -1.0, -1.0]), clip=0.2)
    assert loss.detach().tolist() == pytest.approx([-1.2, 2.0, 0.8])
    loss.sum().backward()
    # Positive advantage beyond 1 + eps: clipped, no gradient; negative advantage: still pushed down.
    assert log_prob.grad.tolist()[0] == 0.0 and log_prob.grad.tolist()[1] > 0 and log_prob.grad.tolist()[2] == 0.0


def test_dual_clip_caps_a_negative_advantage_tokens_loss() -> None:
    # rho = 100 (a rare behaviour token the heads like): plain PPO's loss is 100 |A| with full gradient.
    log_prob = torch.tensor([np.log(100.0), np.log(100.0), np.log(2.0)], requires_grad=True)
    advantage = torch.tensor([-1.0, 1.0, -1.0])
    plain = ppo_surrogate(log_prob, torch.zeros(3), advantage, clip=0.2)
    assert plain.detach().tolist() == pytest.approx([100.0, -1.2, 2.0])
    capped = ppo_surrogate(log_prob, torch.zeros(3), advantage, clip=0.2, dual_clip=3.0)
    assert capped.detach().tolist() == pytest.approx([3.0, -1.2, 2.0])  # below the cap: unchanged
    capped.sum().backward()
    assert log_prob.grad.tolist()[0] == 0.0 and log_prob.grad.tolist()[2] > 0
    with pytest.raises(ValueError, match="dual_clip"):
        OutcomeConfig(dual_clip=0.5)


def test_the_outcome_objective_lowers_its_loss_and_is_seeded() -> None:
    cache = _rollout_cache()
    config = OutcomeConfig(learning_rate=3e-3, epochs=15, groups_per_step=4, validation_fraction=0.0, seed=5,
                           train_top_p=False, inner_size=32)
    plan = plan_outcome_data(cache, config.validation_fraction, config.seed)
    assert plan.train_groups  # the synthetic rewards give mixed groups

    from deco_middleware.heads.modules import AutoDecoHeads

    torch.manual_seed(config.seed)
    fresh = AutoDecoHeads(16, inner_size=32)
    with torch.no_grad():
        before = float(group_loss(fresh, cache, plan, plan.train_groups, config)[0])
    first = fit_outcome(cache, config)
    with torch.no_grad():
        after = float(group_loss(first.heads, cache, plan, plan.train_groups, config)[0])
    assert after < before - 0.05
    # Rewards favour following the argmax: the learned temperature goes down.
    assert first.history[-1]["T"] < 1.0
    second = fit_outcome(cache, config)
    for (name, a), b in zip(first.heads.state_dict().items(), second.heads.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_cache_without_rewards_is_refused_clearly() -> None:
    cache = _memory_cache([{"group": None}], [2], np.zeros((2, 4)), np.zeros(2), np.zeros((5, 4)))
    cache.meta["record_info"] = None
    with pytest.raises(TrainingDataError, match="record_info"):
        plan_outcome_data(cache, 0.1, 0)


def test_keep_best_returns_the_heads_of_the_lowest_validation_checkpoint() -> None:
    cache = _rollout_cache()
    config = OutcomeConfig(learning_rate=3e-2, epochs=15, groups_per_step=2, validation_fraction=0.3, seed=5,
                           train_top_p=False, inner_size=32, validate_every=3, keep_best=True)
    fit = fit_outcome(cache, config)
    losses = [c["ppo_loss"] for c in fit.checkpoints]
    assert fit.checkpoints[0]["step"] == 0 and fit.checkpoints[-1]["step"] == fit.steps and len(losses) >= 4
    best = int(np.argmin(losses))
    assert fit.best_step == fit.checkpoints[best]["step"]
    assert fit.validation["ppo_loss"] == pytest.approx(losses[best], abs=1e-5)  # the kept heads, re-validated
    with pytest.raises(ValueError, match="validate_every"):
        OutcomeConfig(keep_best=True)
    with pytest.raises(TrainingDataError, match="keep_best"):
        fit_outcome(cache, OutcomeConfig(validation_fraction=0.0, validate_every=2, keep_best=True, train_top_p=False))


# -- steering ---------------------------------------------------------------------------------------


def test_ranking_loss_sign_and_zero_gradient_once_the_margin_is_met() -> None:
    lower = torch.tensor([0.5], requires_grad=True)
    higher = torch.tensor([0.6], requires_grad=True)
    loss = ranking_loss(lower, higher, margin=0.25)
    assert float(loss.detach()) == pytest.approx(0.15)
    loss.backward()
    assert float(lower.grad) > 0 and float(higher.grad) < 0  # descent lowers `lower`, raises `higher`
    lower = torch.tensor([0.2], requires_grad=True)
    higher = torch.tensor([0.6], requires_grad=True)
    loss = ranking_loss(lower, higher, margin=0.25)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(lower.grad) == 0.0 and float(higher.grad) == 0.0


def test_training_and_evaluation_phrasings_are_disjoint() -> None:
    for direction in steering.STEER_VALUES:
        train = {p.lower().strip() for p in steering.TRAIN_PHRASINGS[direction]}
        held_out = {p.lower().strip() for p in steering.EVAL_PHRASINGS[direction]}
        assert train and held_out and not train & held_out
    every = [p for d in steering.STEER_VALUES for s in (steering.TRAIN_PHRASINGS, steering.EVAL_PHRASINGS) for p in s[d]]
    every += list(steering.NEUTRAL_PHRASINGS)
    assert len({p.lower().strip() for p in every}) == len(every)


def test_generated_phrasings_avoid_the_held_out_sentences_and_their_key_words() -> None:
    import re

    generated = steering.generated_phrasings()
    assert generated == steering.generated_phrasings()  # deterministic
    held_out = {p.lower().strip() for d in steering.STEER_VALUES for p in steering.EVAL_PHRASINGS[d]}
    keys = set(steering.EVAL_KEY_WORDS)
    for direction in steering.STEER_VALUES:
        sentences = generated[direction]
        assert len(sentences) > 300 and len(set(sentences)) == len(sentences)
        assert not {s.lower().strip() for s in sentences} & held_out
        assert not [s for s in sentences if set(re.findall(r"\w+", s.lower())) & keys]
        # every key word really is a word of some held-out phrasing (the list cannot go stale silently)
    words = {w for p in held_out for w in re.findall(r"\w+", p)}
    assert keys <= words
    assert not set(generated["low"]) & set(generated["high"])
    both = steering.training_phrasings("generated")
    for direction in steering.STEER_VALUES:
        assert both[direction][:len(steering.TRAIN_PHRASINGS[direction])] == steering.TRAIN_PHRASINGS[direction]
        assert set(generated[direction]) <= set(both[direction])
    assert steering.training_phrasings("hand") is steering.TRAIN_PHRASINGS
    with pytest.raises(steering.SteerError, match="got 'many'.*'hand'"):
        steering.training_phrasings("many")


def test_steer_prompt_puts_the_instruction_at_the_end_of_the_user_turn() -> None:
    assert steering.steer_prompt("What is 2+2?", None) == "What is 2+2?"
    assert steering.steer_prompt("What is 2+2?", "low") == "What is 2+2?\n\nAnswer with low randomness."
    with pytest.raises(steering.SteerError, match="'low', 'high' or None, got 'medium'"):
        steering.steer_prompt("x", "medium")


def test_learned_decoding_steer_uses_the_training_placement_and_refuses_unknown_values(tiny_lm) -> None:
    from deco_middleware.hf.processors import LearnedDecoding

    _, tokenizer = tiny_lm
    decoding = LearnedDecoding("smollm2-135m-instruct", steer="high")
    text = tokenizer.decode(decoding.chat_inputs(tokenizer, ["Name a colour."])["input_ids"][0])
    user_turn = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user_turn == steering.steer_prompt("Name a colour.", "high")
    assert steering.DEFAULT_INSTRUCTION["high"] in steering.TRAIN_PHRASINGS["high"]
    with pytest.raises(steering.SteerError, match="got 'loud'"):
        LearnedDecoding("smollm2-135m-instruct", steer="loud")
    with pytest.raises(ValueError):  # SteerError is a ValueError too
        LearnedDecoding("smollm2-135m-instruct", steer="LOW")


def test_steer_prompt_places_the_instruction_in_the_user_or_the_system_message() -> None:
    low = steering.DEFAULT_INSTRUCTION["low"]
    assert steering.steer_prompt("Q", "low", placement="system", system="You are X") == [
        {"role": "system", "content": f"You are X {low}"}, {"role": "user", "content": "Q"}]
    assert steering.steer_prompt("Q", "low", placement="system") == [  # a template with no default system message
        {"role": "system", "content": low}, {"role": "user", "content": "Q"}]
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Q"}]
    placed = steering.steer_prompt(conversation, "high", placement="system", system="ignored: it has one")
    assert placed[0] == {"role": "system", "content": f"Be brief. {steering.DEFAULT_INSTRUCTION['high']}"}
    assert placed[1:] == conversation[1:]
    placed = steering.steer_prompt(conversation, "high")  # user placement: the last user message
    assert placed[:3] == conversation[:3] and placed[3]["content"] == steering.steer_prompt("Q", "high")
    assert conversation[0]["content"] == "Be brief." and conversation[3]["content"] == "Q"  # the input is not changed
    assert steering.steer_prompt(conversation, None, placement="system") is conversation
    with pytest.raises(steering.SteerError, match="one of 'user', 'system', got 'assistant'"):
        steering.steer_prompt("Q", "low", placement="assistant")
    with pytest.raises(steering.SteerError, match="no user message"):
        steering.steer_prompt([{"role": "system", "content": "S"}], "low")
    with pytest.raises(ValueError, match="string 'role' and a string 'content'"):
        steering.steer_prompt([{"role": "user"}], "low", placement="system")
    named = [{"role": "user", "content": "Q", "name": "ann"}]
    assert steering.steer_prompt(named, "low")[0] == {"role": "user", "content": steering.steer_prompt("Q", "low"),
                                                       "name": "ann"}
    assert named[0]["content"] == "Q"
    with pytest.raises(ValueError, match="a string .* or a non-empty list"):
        steering.steer_prompt({"role": "user", "content": "Q"}, "low", placement="system")


def test_template_system_message_is_found_by_rendering_with_and_without_one(tiny_lm, tiny_tokenizer) -> None:
    import copy

    from deco_middleware.hf.chat import chat_texts, template_system_message

    _, tokenizer = tiny_lm
    default = template_system_message(tokenizer)
    assert default and default in chat_texts(tokenizer, ["Q"])[0][0]  # SmolLM2's own default system message
    placed = steering.steer_prompt("Q", "low", placement="system", system=default)
    assert chat_texts(tokenizer, [placed])[0][0] == chat_texts(tokenizer, ["Q"])[0][0].replace(
        default, f"{default} {steering.DEFAULT_INSTRUCTION['low']}")  # the sentence is the only change
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    assert template_system_message(plain) is None
    plain.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not "
                           "supported') }}{% endif %}{{ m.content }}{% endfor %}")
    with pytest.raises(ValueError, match="refuses a system message.*System role not supported"):
        template_system_message(plain)
    with pytest.raises(ValueError, match="no chat template.*plain text"):
        chat_texts(tiny_tokenizer, [placed])
    with pytest.raises(ValueError, match="no chat template, so there is no system message"):
        template_system_message(tiny_tokenizer)


def test_learned_decoding_steer_placement_system_keeps_the_default_system_message(tiny_lm) -> None:
    from deco_middleware.hf.processors import LearnedDecoding

    _, tokenizer = tiny_lm
    decoding = LearnedDecoding("smollm2-135m-instruct", steer="low", steer_placement="system")
    text = tokenizer.decode(decoding.chat_inputs(tokenizer, ["Name a colour."])["input_ids"][0])
    system = text.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
    user_turn = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user_turn == "Name a colour."
    assert system.endswith(" " + steering.DEFAULT_INSTRUCTION["low"]) and system.startswith("You are")
    with pytest.raises(steering.SteerError, match="needs the tokenizer"):
        decoding.steer_prompt("Name a colour.")
    assert LearnedDecoding("smollm2-135m-instruct", steer_placement="system").steer_prompt("Q") == "Q"
    with pytest.raises(steering.SteerError, match="got 'end'"):
        LearnedDecoding("smollm2-135m-instruct", steer="low", steer_placement="end")


def test_cache_tokenizes_a_conversation_prompt_like_every_generation_loop(tiny_lm) -> None:
    from deco_middleware.hf.chat import chat_prompt_ids
    from deco_middleware.training.cache import tokenize_record

    _, tokenizer = tiny_lm
    prompt = steering.steer_prompt("What is 2+3?", "high", placement="system", system="S")
    prompt_ids, completion_ids = tokenize_record(tokenizer, {"prompt": prompt, "completion_ids": [5, 6]})
    assert prompt_ids == chat_prompt_ids(tokenizer, [prompt])[0] and completion_ids == [5, 6]
    assert tokenizer.decode(prompt_ids).startswith(f"<|im_start|>system\nS {steering.DEFAULT_INSTRUCTION['high']}")


def test_torch_free_tokenizer_renders_a_conversation_like_transformers(tiny_lm) -> None:
    from deco_middleware.default_model import ensure_default_model
    from deco_middleware.hf.chat import chat_prompt_ids
    from deco_middleware.ort import ChatTokenizer

    _, tokenizer = tiny_lm
    prompt = steering.steer_prompt("What is 2+3?", "low", placement="system", system="S")
    assert ChatTokenizer(ensure_default_model()).encode_chat(prompt) == chat_prompt_ids(tokenizer, [prompt])[0]


def test_add_steer_pairs_copies_completions_under_training_phrasings() -> None:
    records = [{"group": "a", "prompt": "p1", "completion": "c", "completion_ids": [1, 2], "reward": 1.0, "count": 1},
               {"group": "a", "prompt": "p1", "completion": "d", "completion_ids": [3], "reward": 0.0, "count": 1},
               {"group": "b", "prompt": "p2", "completion": "e", "completion_ids": [4], "reward": 0.0, "count": 2}]
    out = add_steer_pairs(records, per_group=1, seed=0)
    copies = out[3:]
    assert [(c["steer"], c["pair"]) for c in copies] == [("low", 0), ("high", 0), ("low", 2), ("high", 2)]
    for c in copies:
        base, instruction = c["prompt"].split("\n\n")
        assert base == records[c["pair"]]["prompt"] and instruction in steering.TRAIN_PHRASINGS[c["steer"]]
        assert c["completion_ids"] == records[c["pair"]]["completion_ids"] and "reward" not in c
    placed = add_steer_pairs(records, per_group=1, seed=0, placement="system", system="You are X")
    for c, user_placed in zip(placed[3:], copies):  # the same draws of phrasing, in the system message
        sentence = user_placed["prompt"].split("\n\n")[1]
        assert c["prompt"] == [{"role": "system", "content": f"You are X {sentence}"},
                               {"role": "user", "content": records[c["pair"]]["prompt"]}]
    with pytest.raises(steering.SteerError, match="got 'end'"):
        add_steer_pairs(records, placement="end")


def test_training_with_pairs_separates_low_and_high_mean_temperature() -> None:
    """Tiny in-memory model: the instruction shifts the hidden states along a direction (as a
    prompt does in a real LM); the ranking loss must learn to read it."""
    rng = np.random.default_rng(1)
    hidden_size, vocab, length = 16, 30, 5
    lm_head = rng.normal(size=(vocab, hidden_size))
    direction = rng.normal(size=hidden_size)
    info, lengths, hidden, labels = [], [], [], []
    for pair in range(40):
        base = rng.normal(size=(length, hidden_size))
        y = rng.integers(0, vocab, length)
        neutral = len(info)
        for steer, shift in ((None, 0.0), ("low", -1.0), ("high", 1.0)):
            info.append({"group": f"g{pair}", "steer": steer, "pair": neutral if steer else None,
                         "reward": None if steer else float(pair % 2), "temperature": 0.6, "count": 1})
            lengths.append(length)
            hidden.append(base + shift * direction)
            labels.append(y)
    cache = _memory_cache(info, lengths, np.concatenate(hidden), np.concatenate(labels), lm_head)
    config = OutcomeConfig(learning_rate=3e-3, epochs=20, pairs_per_step=8, validation_fraction=0.25, seed=2,
                           train_top_p=False, inner_size=32, steer_margin=0.25)
    plan = plan_outcome_data(cache, config.validation_fraction, config.seed)
    assert plan.val_pairs and plan.train_pairs and not plan.train_groups
    from deco_middleware.heads.modules import AutoDecoHeads

    torch.manual_seed(config.seed)
    with torch.no_grad():
        _, before = steer_loss(AutoDecoHeads(hidden_size, inner_size=32), cache, plan, plan.val_pairs, config)
    fit = fit_outcome(cache, config)
    with torch.no_grad():
        _, after = steer_loss(fit.heads, cache, plan, plan.val_pairs, config)
    # Held-out pairs: low below neutral below high, by most of the margin.
    assert after["dT_low"] < -0.15 and after["dT_high"] > 0.15
    assert after["dT_high"] - after["dT_low"] > (before["dT_high"] - before["dT_low"]) + 0.3


def test_neutral_copies_and_the_hold_term_keep_the_temperature_under_a_neutral_sentence() -> None:
    """A neutral sentence shifts the hidden states along its own direction; a steering pair is there too
    (the instructions shift along another). With the hold term the fitted heads keep mean T under the
    neutral sentence within a few hundredths of the plain prompt's; with weight 0 they do not."""
    records = [{"group": "a", "prompt": "p1", "completion": "c", "completion_ids": [1, 2], "reward": 1.0, "count": 1}]
    out = add_steer_pairs(records, per_group=1, seed=0, neutral=steering.NEUTRAL_PHRASINGS)
    assert [(c["steer"], c["pair"]) for c in out[1:]] == [("low", 0), ("high", 0), ("neutral", 0)]
    assert out[3]["prompt"].split("\n\n")[1] in steering.NEUTRAL_PHRASINGS and out[3]["completion_ids"] == [1, 2]
    rng = np.random.default_rng(4)
    hidden_size, vocab, length = 16, 30, 5
    lm_head = rng.normal(size=(vocab, hidden_size))
    steer_direction, neutral_direction = rng.normal(size=hidden_size), rng.normal(size=hidden_size)
    info, lengths, hidden, labels = [], [], [], []
    for pair in range(40):
        base = rng.normal(size=(length, hidden_size))
        y = rng.integers(0, vocab, length)
        plain = len(info)
        for steer, shift in ((None, 0.0), ("low", -steer_direction), ("high", steer_direction),
                             ("neutral", 2.0 * neutral_direction)):
            info.append({"group": f"g{pair}", "steer": steer, "pair": plain if steer else None,
                         "reward": None if steer else float(pair % 2), "temperature": 0.6, "count": 1})
            lengths.append(length)
            hidden.append(base + shift)
            labels.append(y)
    cache = _memory_cache(info, lengths, np.concatenate(hidden), np.concatenate(labels), lm_head)
    shifts = {}
    for weight in (0.0, 5.0):
        config = OutcomeConfig(learning_rate=3e-3, epochs=20, pairs_per_step=8, validation_fraction=0.25, seed=2,
                               train_top_p=False, inner_size=32, steer_margin=0.25, steer_hold_weight=weight)
        plan = plan_outcome_data(cache, config.validation_fraction, config.seed)
        assert len(plan.train_holds) == len(plan.train_pairs) and plan.val_holds
        fit = fit_outcome(cache, config)
        assert fit.validation["dT_low"] < -0.1 and fit.validation["dT_high"] > 0.1
        shifts[weight] = fit.validation["dT_neutral_abs"]
    assert shifts[5.0] < 0.05 and shifts[0.0] > 2 * shifts[5.0]


def test_hold_loss_is_zero_within_the_tolerance() -> None:
    from deco_middleware.heads.modules import AutoDecoHeads
    from deco_middleware.training.outcome import hold_loss

    hidden = np.ones((4, 8), dtype=np.float32)
    cache = _memory_cache([{"group": "g", "reward": 1.0, "temperature": 0.6, "count": 1},
                           {"group": "g", "steer": "neutral", "pair": 0}], [2, 2], hidden, np.zeros(4), np.ones((5, 8)))
    plan = plan_outcome_data(cache, 0.0, 0)
    assert plan.train_holds == [(0, 1)]
    torch.manual_seed(0)
    heads = AutoDecoHeads(8, inner_size=4)
    loss, stats = hold_loss(heads, cache, plan, plan.train_holds, OutcomeConfig())
    assert float(loss.detach()) == 0.0 and stats["dT_neutral"] == 0.0  # same hidden states: no shift
    cache.hidden[2:] = np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)  # the copy's hidden states move
    loss, stats = hold_loss(heads, cache, plan, plan.train_holds, OutcomeConfig(steer_hold_tolerance=0.0))
    with torch.no_grad():
        plain = heads.temp_head(torch.from_numpy(cache.hidden[:2])).mean()
        copy = heads.temp_head(torch.from_numpy(cache.hidden[2:])).mean()
    assert float(loss.detach()) == pytest.approx(abs(float(copy - plain)), abs=1e-6) and float(loss.detach()) > 0


# -- honesty rules of the data ----------------------------------------------------------------------


def test_rollouts_refuse_held_out_tasks_and_evaluation_seeds() -> None:
    assert not {spec[0] for spec in ROLLOUT_TASKS.values()} & RESERVED_TASKS
    with pytest.raises(TrainingDataError, match="evaluation or dev seed"):
        RolloutConfig(seed=90_210)
    with pytest.raises(TrainingDataError, match="evaluation or dev seed"):
        RolloutConfig(seed=4_242)


# -- the steering report ----------------------------------------------------------------------------


def test_steer_report_metrics_on_hand_built_rows() -> None:
    from deco_middleware.evaluation.steer import distinct_n, majority_correct, steer_markdown, summarize_steer

    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a"], 2) == 0.0
    # maj@k: "4" twice beats "5" once; ties go to the first answer seen.
    assert majority_correct(["it is 4", "5", "so 4"], [1.0, 0.0, 1.0], "4")
    assert not majority_correct(["5", "4"], [0.0, 1.0], "4")

    def cond(t: float, phrasing: str | None = None, pass1: float = 0.5, passk: float = 1.0, maj: float = 1.0,
             distinct: float = 0.5) -> dict:
        return {"T": t, "P": 1.0, "pass@1": pass1, "pass@k": passk, "maj@k": maj, "distinct-2": distinct,
                "phrasing": phrasing}

    rows = {"rg:a": [{"none": cond(0.6), "low": cond(0.3, "L1", pass1=0.75, maj=0.0),
                      "high": cond(0.9, "H1", passk=0.0, distinct=0.9)},
                     {"none": cond(0.6, pass1=0.25), "low": cond(0.7, "L2", pass1=0.25),
                      "high": cond(0.8, "H2", distinct=0.7)}]}
    report = summarize_steer(rows)
    overall = report["overall"]
    assert overall["dT_low"] == pytest.approx(-0.1) and overall["dT_high"] == pytest.approx(0.25)
    assert overall["consistency_low"] == 0.5 and overall["consistency_high"] == 1.0
    assert report["phrasings"]["L2"] == {"direction": "low", "problems": 1, "dT": pytest.approx(0.1),
                                         "dT_se": 0.0, "consistency": 0.0}
    # Paired over problems, instructed minus none: low pass@1 +0.25 / 0.0, low maj@k -1 / 0.
    assert overall["dpass@1_low"] == pytest.approx(0.125) and overall["dpass@1_low_se"] == pytest.approx(0.125)
    assert overall["dmaj@k_low"] == pytest.approx(-0.5) and overall["dpass@k_high"] == pytest.approx(-0.5)
    assert overall["ddistinct-2_high"] == pytest.approx(0.3) and overall["ddistinct-2_high_se"] == pytest.approx(0.1)
    markdown = steer_markdown(report)
    assert "| L1 | low | 1 |" in markdown
    assert "| **overall** | +12.5 ± 12.5 | -50.0 ± 50.0 | +0.300 ± 0.100 | -50.0 ± 50.0 |" in markdown


def test_steer_phrasing_sources_name_the_held_out_set_and_the_api_sentence() -> None:
    from deco_middleware.evaluation.steer import steer_phrasings

    assert steer_phrasings("held-out") == {d: list(p) for d, p in steering.EVAL_PHRASINGS.items()}
    api = steer_phrasings("api")
    assert api == {d: [steering.DEFAULT_INSTRUCTION[d]] for d in steering.STEER_VALUES}
    for direction in steering.STEER_VALUES:  # what LearnedDecoding(steer=...) inserts is what is measured
        assert steering.steer_prompt("Q", direction) == "Q\n\n" + api[direction][0]
    with pytest.raises(ValueError, match="'train'.*held-out, api"):
        steer_phrasings("train")


def test_prompt_shared_rollout_cache_matches_the_plain_cache(tiny_lm, tmp_path: Path) -> None:
    from deco_middleware.training.cache import build_cache
    from deco_middleware.training.rollouts import build_rollout_cache

    model, tokenizer = tiny_lm
    records = [{"prompt": "What is 2 + 3?", "completion": "x", "completion_ids": [5, 6, 7, 8], "reward": 1.0},
               {"prompt": "What is 2 + 3?", "completion": "x", "completion_ids": [9], "reward": 0.0},
               {"prompt": "Spell cat.", "completion": "x", "completion_ids": [11, 12, 13], "reward": 0.0}]
    plain = build_cache(model, tokenizer, records, tmp_path / "plain", progress=False)
    shared = build_rollout_cache(model, tokenizer, records, tmp_path / "shared")
    for index in range(3):
        a = np.flatnonzero(np.asarray(plain.sequence) == index)
        b = np.flatnonzero(np.asarray(shared.sequence) == index)
        assert np.array_equal(plain.labels[a], shared.labels[b])
        assert np.allclose(plain.hidden[a], shared.hidden[b], atol=1e-4)
    assert shared.meta["record_info"][1]["reward"] == 0.0 and shared.meta["prompts_shared"] == 2


def test_generate_rollouts_keeps_every_draw_with_its_behaviour_policy(tiny_lm, tmp_path: Path) -> None:
    import json

    from deco_middleware.training.rollouts import generate_rollouts

    model, tokenizer = tiny_lm
    config = RolloutConfig(tasks=("products", "chain_sum"), prompts_per_task=2, temperatures=(0.3, 1.0),
                           samples_per_temperature=2, max_new_tokens=3, batch_size=4, seed=5)
    out = tmp_path / "r.jsonl"
    summary = generate_rollouts(model, tokenizer, config, out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert not (tmp_path / "r.jsonl.partial").exists()
    assert sum(r["count"] for r in records) == 2 * 2 * 2 * 2 == summary["draws"]
    for r in records:
        assert r["temperature"] in (0.3, 1.0) and r["top_p"] == 1.0 and r["reward"] in (0.0, 1.0)
        assert 1 <= len(r["completion_ids"]) <= 3 and r["group"].startswith(r["task"] + ":5:")
    assert {r["task"] for r in records} == {"products", "chain_sum"}


def test_concatenate_caches_offsets_records_and_pairs(tmp_path: Path) -> None:
    import json

    from deco_middleware.training.rollouts import concatenate_caches

    def write(name: str, lengths: list[int], info: list[dict]) -> Path:
        d = tmp_path / name
        d.mkdir()
        n = sum(lengths)
        np.save(d / "hidden.npy", np.arange(n * 2, dtype=np.float32).reshape(n, 2))
        np.save(d / "labels.npy", np.arange(n, dtype=np.int64))
        np.save(d / "sequence.npy", np.concatenate([np.full(k, i, dtype=np.int32) for i, k in enumerate(lengths)]))
        np.save(d / "lm_head.npy", np.ones((3, 2), dtype=np.float32))
        meta = {"format": 1, "base_model": {"name": "m"}, "records": len(lengths), "records_used": len(lengths),
                "record_sources": ["rollout"] * len(lengths), "record_info": info, "completion_tokens": n,
                "forwarded_tokens": n, "wall_seconds": 1.0}
        (d / "meta.json").write_text(json.dumps(meta))
        return d

    a = write("a", [2, 1], [{"group": "x", "reward": 1.0}, {"group": "x", "steer": "low", "pair": 0}])
    b = write("b", [1, 2], [{"group": "y", "reward": 0.0}, {"group": "y", "steer": "high", "pair": 0}])
    merged = concatenate_caches([a, b], tmp_path / "m")
    assert list(merged.sequence) == [0, 0, 1, 2, 3, 3]
    assert [r.get("pair") for r in merged.meta["record_info"]] == [None, 0, None, 2]
    assert merged.meta["records"] == 4 and merged.hidden.shape == (6, 2)


def test_rollout_prompts_never_include_an_evaluation_prompt() -> None:
    """products has only 100 distinct prompts: without the exclusion a training seed repeats test prompts."""
    pytest.importorskip("reasoning_gym")
    from deco_middleware.training.data import make_problems
    from deco_middleware.training.rollouts import ROLLOUT_TASKS, RolloutConfig, evaluation_prompts

    held_out = evaluation_prompts()
    assert len(held_out) >= 200  # five test sets of 50 distinct prompts (a few may coincide across tasks)
    dataset, config = ROLLOUT_TASKS["products"]
    plain, _ = make_problems(dataset, 40, 21, dict(config))
    assert {p.prompt for p in plain} & held_out  # the overlap the exclusion exists for
    kept, _ = make_problems(dataset, 40, 21, dict(config), exclude=held_out)
    assert len(kept) == 40 and not {p.prompt for p in kept} & held_out
    for seed in (90210, 4242, 5151):
        with pytest.raises(Exception, match="evaluation or dev seed"):
            RolloutConfig(seed=seed)


def test_on_policy_rollouts_record_the_heads_per_token_behaviour(tiny_lm, tmp_path: Path) -> None:
    """Draws by the heads at autodeco@S keep the T and P the sampler applied at every token; they equal
    the heads' prediction on the cached hidden states (times S), and the outcome objective reads them."""
    import json

    from deco_middleware.heads.artifact import export_heads
    from deco_middleware.heads.torch_artifact import torch_heads_from_artifact
    from deco_middleware.hf import model_identity
    from deco_middleware.heads import DecodingHeads
    from deco_middleware.training.cache import FeatureCache
    from deco_middleware.training.outcome import behaviour_token_log_prob, record_behaviour
    from deco_middleware.training.rollouts import build_rollout_cache, generate_rollouts

    from conftest import random_heads_weights

    model, tokenizer = tiny_lm
    heads_dir = tmp_path / "heads"
    export_heads(random_heads_weights(model.config.hidden_size, seed=3), heads_dir, base_model=model_identity(model))
    config = RolloutConfig(tasks=("products",), prompts_per_task=2, temperatures=(1.0,), samples_per_temperature=2,
                           max_new_tokens=5, batch_size=4, seed=5, heads=str(heads_dir), head_scales=(0.5,))
    out = tmp_path / "r.jsonl"
    summary = generate_rollouts(model, tokenizer, config, out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    learned = [r for r in records if r.get("behaviour") == "autodeco@0.5"]
    assert learned and sum(r["count"] for r in records) == 2 * 2 * 2 == summary["draws"]
    assert set(summary["tasks"]["products"]["by_temperature"]) == {"1.0", "autodeco@0.5"}
    eos = tokenizer.eos_token_id
    for r in records:  # the end-of-turn token once, last, when drawn (it used to be appended a second time)
        assert r["completion_ids"].count(eos) == (0 if r["truncated"] else 1)
        assert r["truncated"] or r["completion_ids"][-1] == eos
    cache = build_rollout_cache(model, tokenizer, records, tmp_path / "cache")
    torch_heads = torch_heads_from_artifact(DecodingHeads.from_pretrained(heads_dir))
    sequence = np.asarray(cache.sequence)
    for index, r in enumerate(records):
        tokens = np.flatnonzero(sequence == index)
        temperature, top_p = record_behaviour(cache.meta["record_info"][index], len(tokens))
        if r.get("behaviour") is None:
            assert np.all(temperature == 1.0) and np.all(top_p == 1.0)
            continue
        hidden = torch.from_numpy(np.asarray(cache.hidden[tokens], dtype=np.float32))
        logits = cache.logits(hidden)
        with torch.no_grad():
            predicted_t, predicted_p = torch_heads(hidden, logits)
        np.testing.assert_allclose(temperature, 0.5 * predicted_t.numpy(), atol=1e-3)
        np.testing.assert_allclose(top_p, predicted_p.numpy(), atol=1e-3)
        labels = torch.from_numpy(np.asarray(cache.labels[tokens], dtype=np.int64))
        old = behaviour_token_log_prob(logits, labels, torch.from_numpy(temperature), torch.from_numpy(top_p))
        assert torch.isfinite(old).all() and bool((old <= 1e-6).all())
    with pytest.raises(Exception, match="per-token temperatures"):
        record_behaviour(cache.meta["record_info"][[i for i, r in enumerate(records) if r.get("behaviour")][0]], 99)
    with pytest.raises(Exception, match="head_scales"):
        RolloutConfig(tasks=("products",), heads=str(heads_dir))
