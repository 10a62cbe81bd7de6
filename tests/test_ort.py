"""ONNX Runtime backend on a tiny in-memory Llama exported through Optimum (needs `deco-middleware[ort]`,
i.e. optimum-onnx 0.1.0 and transformers 4.57.x; skipped cleanly where optimum is not installed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("optimum.onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import make_tiny_model, random_heads_weights  # noqa: E402

from deco_middleware import DecodingHeads, export_heads  # noqa: E402
from deco_middleware.errors import IncompatibleHeadsError  # noqa: E402
from deco_middleware.hf import LearnedDecoding, model_identity  # noqa: E402
from deco_middleware.ort import (  # noqa: E402
    HIDDEN_STATE_OUTPUT,
    MissingHiddenStateOutputError,
    OnnxCausalLM,
    OnnxGenerator,
    ORTModelForCausalLMWithHiddenStates,
    export_lm,
)
from deco_middleware.ort.graph import EXPORT_INFO_NAME, graph_outputs  # noqa: E402

PAD = 3


@pytest.fixture(scope="module")
def tiny_lm():
    # Its own instance: export_lm casts the model to float32 and eval mode in place.
    return make_tiny_model()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_lm, tiny_tokenizer):
    directory = tmp_path_factory.mktemp("ort") / "tiny-onnx"
    report = export_lm(tiny_lm, directory, tokenizer=tiny_tokenizer, name="tiny-llama")
    return directory, report


@pytest.fixture(scope="module")
def heads_for_tiny(tmp_path_factory, tiny_lm):
    directory = tmp_path_factory.mktemp("ort_heads")
    export_heads(random_heads_weights(tiny_lm.config.hidden_size, seed=3), directory, base_model=model_identity(tiny_lm))
    return DecodingHeads.from_pretrained(directory)


@pytest.fixture
def batch(tiny_tokenizer):
    encoded = tiny_tokenizer(["w1 w2 w3 w4 w5", "w7 w8"], return_tensors="pt", padding=True, return_token_type_ids=False)
    return dict(encoded)


def _torch_lm_head_input(model, **inputs):
    captured = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        handle.remove()
    return out.logits, captured[0]


def test_export_writes_hidden_state_output_and_report(tiny_export):
    directory, report = tiny_export
    assert HIDDEN_STATE_OUTPUT in graph_outputs(directory / "model.onnx")
    saved = json.loads((directory / EXPORT_INFO_NAME).read_text())
    assert saved["max_abs_diff_logits"] == report.max_abs_diff_logits < 1e-4
    assert saved["max_abs_diff_hidden_state"] == report.max_abs_diff_hidden_state < 1e-4
    assert saved["base_model"]["name"] == "tiny-llama"
    assert (directory / "model.onnx_data").is_file() and (directory / "tokenizer.json").is_file()


def test_export_refuses_existing_folder(tiny_export, tiny_lm):
    directory, _ = tiny_export
    with pytest.raises(FileExistsError, match="overwrite"):
        export_lm(tiny_lm, directory)


def test_hidden_state_equals_torch_lm_head_input(tiny_export, tiny_lm, batch):
    lm = OnnxCausalLM(tiny_export[0])
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    logits, hidden = _torch_lm_head_input(tiny_lm, **batch, position_ids=positions)
    outputs, _ = lm.prefill(batch["input_ids"].numpy(), mask.numpy())
    valid = mask.numpy().astype(bool)
    np.testing.assert_allclose(outputs.hidden_states[valid], hidden.numpy()[valid], atol=1e-5)
    np.testing.assert_allclose(outputs.logits[valid], logits.numpy()[valid], atol=1e-4)


def test_identity_from_onnx_weights_matches_torch_and_refuses_other_models(tiny_export, heads_for_tiny, tmp_path):
    lm = OnnxCausalLM(tiny_export[0])
    heads_for_tiny.check_compatible(lm.identity())  # same fingerprint as the torch model the heads were made for
    other = make_tiny_model(seed=1)
    export_heads(random_heads_weights(32), tmp_path, base_model=model_identity(other))
    with pytest.raises(IncompatibleHeadsError, match="fingerprint"):
        OnnxGenerator(lm, DecodingHeads.from_pretrained(tmp_path))


@pytest.mark.parametrize("use_io_binding", [False, True])
def test_processor_pair_unchanged_in_ort_generate_matches_torch(tiny_export, tiny_lm, heads_for_tiny, batch, use_io_binding):
    ort_model = ORTModelForCausalLMWithHiddenStates.from_pretrained(tiny_export[0], use_io_binding=use_io_binding)
    runs = {}
    for name, model in (("torch", tiny_lm), ("ort", ort_model)):
        torch.manual_seed(0)
        with LearnedDecoding(heads_for_tiny, record_trace=True).attach(model) as session:
            sequences = session.generate(**batch, max_new_tokens=12, pad_token_id=PAD)
        runs[name] = (sequences, session.trace)
    assert torch.equal(runs["torch"][0], runs["ort"][0])
    torch_steps, ort_steps = runs["torch"][1].steps, runs["ort"][1].steps
    assert len(ort_steps) == len(torch_steps) == 12
    np.testing.assert_allclose([s.temperature for s in ort_steps], [s.temperature for s in torch_steps], atol=1e-5)
    np.testing.assert_allclose([s.top_p for s in ort_steps], [s.top_p for s in torch_steps], atol=1e-5)


def test_processor_pair_in_text_generation_pipeline(tiny_export, heads_for_tiny, tiny_tokenizer):
    ort_model = ORTModelForCausalLMWithHiddenStates.from_pretrained(tiny_export[0])
    generator = transformers.pipeline("text-generation", model=ort_model, tokenizer=tiny_tokenizer)
    with LearnedDecoding(heads_for_tiny, record_trace=True).attach(generator) as session:
        output = session.pipeline("w1 w2 w3", max_new_tokens=6, pad_token_id=PAD, return_full_text=False)
    assert len(session.trace.steps) == 6
    assert all(0 < s.temperature[0] < 2 for s in session.trace.steps)
    assert output[0]["generated_text"].split()[0].startswith("w")


@pytest.mark.parametrize("use_io_binding", [False, True])
def test_torch_free_loop_greedy_equals_ort_generate_greedy(tiny_export, heads_for_tiny, batch, use_io_binding):
    ort_model = ORTModelForCausalLMWithHiddenStates.from_pretrained(tiny_export[0])
    with LearnedDecoding(heads_for_tiny, temperature_scale=0.0).attach(ort_model) as session:
        sequences = session.generate(**batch, max_new_tokens=10, pad_token_id=PAD)
    expected = sequences[:, batch["input_ids"].shape[1] :].tolist()
    prompts = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    lm = OnnxCausalLM(tiny_export[0], use_io_binding=use_io_binding)
    result = OnnxGenerator(lm, heads_for_tiny, temperature_scale=0.0).generate(prompts, max_new_tokens=10, pad_token_id=PAD)
    assert result.token_ids == expected
    assert all(t == 0.0 for row in result.temperature for t in row)


def test_loop_sampling_is_seeded_streams_and_stops(tiny_export, heads_for_tiny, tiny_tokenizer):
    generator = OnnxGenerator(tiny_export[0], heads_for_tiny)
    prompts = [tiny_tokenizer("w1 w2 w3")["input_ids"], tiny_tokenizer("w9")["input_ids"]]
    events = []
    first = generator.generate(prompts, max_new_tokens=8, seed=7, pad_token_id=PAD, on_token=events.append)
    again = generator.generate(prompts, max_new_tokens=8, seed=7, pad_token_id=PAD)
    assert first.token_ids == again.token_ids and first.temperature == again.temperature
    assert [e.token_id for e in events if e.row == 0] == first.token_ids[0]
    assert [e.temperature for e in events if e.row == 1] == first.temperature[1]
    assert first.finish_reason == ["length", "length"] and events[-1].finished
    # EOS: declare row 0's third token the end-of-sequence id; row 0 stops there, row 1 runs on
    eos = first.token_ids[0][2]
    ended = generator.generate(prompts, max_new_tokens=8, seed=7, eos_token_id=eos, pad_token_id=PAD)
    assert ended.token_ids[0] == first.token_ids[0][:3] and ended.finish_reason[0] == "eos"
    # stop string: the decoded text of row 1 after its second token
    decode = tiny_tokenizer.decode
    stop = decode(first.token_ids[1][:2])
    stopped = generator.generate(prompts, max_new_tokens=8, seed=7, pad_token_id=PAD, stop_strings=[stop], decode=decode)
    assert stopped.finish_reason[1] == "stop" and stopped.token_ids[1] == first.token_ids[1][:2]
    assert stopped.texts[1] == stop


def test_loop_is_torch_free(tiny_export, heads_for_tiny):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now fails
        sys.modules["transformers"] = None
        from deco_middleware.ort import OnnxGenerator
        from deco_middleware import DecodingHeads
        heads = DecodingHeads.from_pretrained({str(heads_for_tiny.directory)!r})
        result = OnnxGenerator({str(tiny_export[0])!r}, heads).generate([[5, 6, 7]], max_new_tokens=4, seed=1)
        print(len(result.token_ids[0]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"


def test_onnx_lm_without_hidden_state_output_says_how_to_export(tiny_export, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_export[0] / "model.onnx"))
    kept = [o for o in proto.graph.output if o.name != HIDDEN_STATE_OUTPUT]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, str(tmp_path / "model.onnx"))
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((tiny_export[0] / name).read_bytes())
    with pytest.raises(MissingHiddenStateOutputError, match="deco export-lm"):
        OnnxCausalLM(tmp_path)
    with pytest.raises(MissingHiddenStateOutputError, match="last_hidden_state"):
        ORTModelForCausalLMWithHiddenStates.from_pretrained(tmp_path)


def test_unknown_execution_provider_lists_available(tiny_export):
    with pytest.raises(ValueError, match="Available: .*CPUExecutionProvider"):
        OnnxCausalLM(tiny_export[0], provider="NoSuchExecutionProvider")
    with pytest.raises(ValueError, match="Available: .*CPUExecutionProvider"):
        ORTModelForCausalLMWithHiddenStates.from_pretrained(tiny_export[0], provider="NoSuchExecutionProvider")


def test_missing_onnx_file_names_the_export_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="deco export-lm"):
        OnnxCausalLM(tmp_path)


def test_bad_generate_arguments(tiny_export):
    generator = OnnxGenerator(tiny_export[0])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate([[5]], max_new_tokens=0)
    with pytest.raises(ValueError, match="decode"):
        generator.generate([[5]], stop_strings=["x"])
    with pytest.raises(ValueError, match="at least one token"):
        generator.generate([[]])


def test_generate_text_ort_returns_the_generate_text_keys(tiny_export, heads_for_tiny):
    from deco_middleware.ort import generate_text_ort

    streamed = []
    result = generate_text_ort("w1 w2 w3", model=tiny_export[0], heads=str(heads_for_tiny.directory),
                               max_new_tokens=5, seed=3, on_token=streamed.append)
    assert {"text", "tokens", "token_ids", "temperature", "top_p", "strategy", "model", "heads", "seed"} <= set(result)
    assert result["strategy"] == "autodeco" and result["heads"] == str(heads_for_tiny.directory)
    assert [e.token_id for e in streamed] == result["token_ids"]
    assert len(result["temperature"]) == len(result["token_ids"]) == len(result["tokens"])
    static = generate_text_ort("w1 w2 w3", model=tiny_export[0], strategy="static:0.5,0.9", max_new_tokens=3)
    assert static["temperature"] == [0.5] * len(static["token_ids"]) and static["heads"] is None
    greedy = generate_text_ort("w1 w2 w3", model=tiny_export[0], strategy="greedy", max_new_tokens=3)
    assert greedy["temperature"] == [0.0] * len(greedy["token_ids"])


def test_generate_text_ort_refuses_a_transformers_folder(tmp_path):
    from deco_middleware.ort import generate_text_ort

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="deco export-lm"):
        generate_text_ort("hi", model=tmp_path)


def test_export_lm_cli(tmp_path, tiny_tokenizer):
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app

    source = tmp_path / "tiny"
    make_tiny_model(seed=2).save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    result = CliRunner().invoke(app, ["export-lm", str(source), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / EXPORT_INFO_NAME).read_text())
    assert report["max_abs_diff_logits"] < 1e-4 and report["base_model"]["name"] == "tiny"
    again = CliRunner().invoke(app, ["export-lm", str(source), str(tmp_path / "out")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_load_model_ort_is_a_drop_in_for_load_model(tiny_export, heads_for_tiny, batch):
    from deco_middleware.ort import load_model_ort

    model, tokenizer = load_model_ort(tiny_export[0])
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    with LearnedDecoding(heads_for_tiny, temperature_scale=0.0).attach(model) as session:
        sequences = session.generate(**batch, max_new_tokens=3, pad_token_id=PAD)
    assert sequences.shape == (2, batch["input_ids"].shape[1] + 3)
