"""Learned decoding inside onnxruntime-genai (the `genai` tox env: onnxruntime-genai 0.18, torch only to build).

- the default model built by `deco export-lm --format genai` (cached under $DECO_MODEL_CACHE): logits and hidden
  state vs torch fp32 within 1e-3 (measured ~7e-5);
- greedy and seeded learned generation on a mixed-length batch (left-padded by the ORT loop): the same tokens, and
  T and P within 1e-4, as our ORT loop on the default model's ONNX export (built by the tf457 env into the same
  cache; locally a missing export skips, in CI it fails);
- the run time without torch (a subprocess that cannot import it);
- the refusals, on tiny Llamas through the real builder: no hidden-state output, heads for another model, and a
  builder whose logits are not h @ W^T (genai 0.18 does that on a tiny Llama whose vocab equals its MLP width),
  refused both when we build and when a raw builder folder is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai")

from deco_middleware.errors import IncompatibleHeadsError  # noqa: E402
from deco_middleware.genai import (  # noqa: E402
    GENAI_EXPORT_INFO_NAME,
    GenaiCausalLM,
    GenaiModelError,
    ensure_default_genai,
    generate_text_genai,
    recorded_parity,
)
from deco_middleware.ort import ChatTokenizer, MissingHiddenStateOutputError, OnnxCausalLM, OnnxGenerator  # noqa: E402

PARITY_ATOL = 1e-3  # fp32 genai vs fp32 torch; measured 7.2e-5 (logits) and 8.6e-5 (hidden state)
TP_ATOL = 1e-4
PROMPTS = ("What is 2+2?", "Write a haiku about the sea, and explain each line briefly.", "Hi")


@pytest.fixture(scope="module")
def genai_path() -> Path:
    if os.environ.get("DECO_SKIP_MODEL_TESTS"):
        pytest.skip("DECO_SKIP_MODEL_TESTS is set")
    return ensure_default_genai()


@pytest.fixture(scope="module")
def genai_lm(genai_path) -> GenaiCausalLM:
    return GenaiCausalLM(genai_path)


@pytest.fixture(scope="module")
def ort_lm() -> OnnxCausalLM:
    from deco_middleware.ort import default_onnx_path
    from deco_middleware.ort.graph import EXPORT_INFO_NAME

    path = default_onnx_path()
    if not (path / EXPORT_INFO_NAME).is_file():
        message = (f"the default model's ONNX export is not in {path}; the tf457 env builds it (`tox -e tf457`), "
                   "since optimum-onnx needs transformers < 4.58 and genai's builder needs 5.x")
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return OnnxCausalLM(path)


@pytest.fixture(scope="module")
def heads(genai_lm):
    from deco_middleware.heads.artifact import heads_for_identity

    return heads_for_identity("default", genai_lm.identity())


@pytest.fixture(scope="module")
def tokenizer(genai_path) -> ChatTokenizer:
    return ChatTokenizer(genai_path)


@pytest.mark.model
def test_default_build_matches_torch_fp32(genai_path, genai_lm):
    torch = pytest.importorskip("torch")
    from deco_middleware.default_model import ensure_default_model
    from deco_middleware.genai.export import measure_parity
    from deco_middleware.compat import load_causal_lm

    model = load_causal_lm(ensure_default_model(), dtype=torch.float32).eval()
    weight = model.get_output_embeddings().weight.detach().numpy()
    measured = measure_parity(model, genai_lm, vocab_size=int(model.config.vocab_size), lm_head_weight=weight)
    assert measured["max_abs_diff_logits"] <= PARITY_ATOL
    assert measured["max_abs_diff_hidden_state"] <= PARITY_ATOL
    # SmolLM2 ties its embeddings: the builder's logits are still h @ W^T with the torch weight
    assert model.config.tie_word_embeddings and measured["max_abs_diff_logits_vs_lm_head"] <= PARITY_ATOL
    recorded = recorded_parity(genai_path)
    assert recorded["max_abs_diff_logits"] <= PARITY_ATOL and recorded["tied_word_embeddings"] is True
    info = json.loads((genai_path / GENAI_EXPORT_INFO_NAME).read_text())
    assert info["base_model"] == genai_lm.identity().model_dump(mode="json")
    assert "include_hidden_states=true" in info["builder_command"] and info["versions"]["onnxruntime-genai"] == "0.18.0"


@pytest.mark.model
@pytest.mark.parametrize(
    ("settings", "seed"), [({"temperature_scale": 0.0}, 0), ({}, 0), ({}, 7), ({"temperature_scale": 1.5}, 3)],
    ids=["greedy", "learned-seed0", "learned-seed7", "learned-hot-seed3"],
)
def test_same_tokens_t_and_p_as_the_ort_loop_on_a_left_padded_batch(genai_lm, ort_lm, heads, tokenizer, settings, seed):
    prompts = [tokenizer.encode_chat(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 3  # unequal lengths: the ORT loop left-pads two of them
    common = {"max_new_tokens": 20, "seed": seed, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, "decode": tokenizer.decode}
    events: dict[str, list] = {"ort": [], "genai": []}
    ours = OnnxGenerator(ort_lm, heads, **settings).generate(prompts, on_token=events["ort"].append, **common)
    theirs = OnnxGenerator(genai_lm, heads, **settings).generate(prompts, on_token=events["genai"].append, **common)
    assert theirs.token_ids == ours.token_ids
    assert theirs.finish_reason == ours.finish_reason and theirs.texts == ours.texts
    for a, b in zip(ours.temperature + ours.top_p, theirs.temperature + theirs.top_p):
        np.testing.assert_allclose(b, a, atol=TP_ATOL, rtol=0)
    # streaming: the same events in the same order (row, step, token, text, finished)
    key = [(e.row, e.step, e.token_id, e.text, e.finished) for e in events["ort"]]
    assert [(e.row, e.step, e.token_id, e.text, e.finished) for e in events["genai"]] == key
    if settings.get("temperature_scale", 1.0) > 0:
        assert any(t > 0 for row in theirs.temperature for t in row)


@pytest.mark.model
def test_a_row_alone_equals_the_same_row_in_a_padded_batch(genai_lm, heads, tokenizer):
    prompts = [tokenizer.encode_chat(p) for p in PROMPTS]
    batch = OnnxGenerator(genai_lm, heads, temperature_scale=0.0).generate(prompts, max_new_tokens=12, pad_token_id=0)
    alone = OnnxGenerator(genai_lm, heads, temperature_scale=0.0).generate([prompts[2]], max_new_tokens=12, pad_token_id=0)
    assert batch.token_ids[2] == alone.token_ids[0]


@pytest.mark.model
def test_stop_strings_and_eos_end_rows_like_the_ort_loop(genai_lm, heads, tokenizer):
    prompts = [tokenizer.encode_chat("Count from 1 to 10, separated by commas.")]
    full = OnnxGenerator(genai_lm, heads, temperature_scale=0.0).generate(
        prompts, max_new_tokens=40, eos_token_id=tokenizer.eos_token_id, decode=tokenizer.decode)
    assert "3" in full.texts[0]
    stopped = OnnxGenerator(genai_lm, heads, temperature_scale=0.0).generate(
        prompts, max_new_tokens=40, eos_token_id=tokenizer.eos_token_id, decode=tokenizer.decode, stop_strings=["3"])
    assert stopped.finish_reason == ["stop"] and "3" in stopped.texts[0]
    assert stopped.token_ids[0] == full.token_ids[0][: len(stopped.token_ids[0])]


@pytest.mark.model
def test_generate_text_genai_gives_the_ort_json_keys(genai_path, ort_lm):
    from deco_middleware.ort import generate_text_ort

    ours = generate_text_ort("What is 2+2?", model=ort_lm, max_new_tokens=8, seed=3)
    theirs = generate_text_genai("What is 2+2?", model=str(genai_path), max_new_tokens=8, seed=3)
    assert set(theirs) == set(ours) and theirs["backend"] == "genai"
    assert theirs["token_ids"] == ours["token_ids"] and theirs["text"] == ours["text"]


@pytest.mark.model
def test_the_run_time_needs_no_torch(genai_path):
    # torch is installed in this env (to build); the child process makes importing it fail
    code = (
        "import sys, json; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from deco_middleware.genai import generate_text_genai\n"
        f"r = generate_text_genai('Hi', model={str(genai_path)!r}, max_new_tokens=4, seed=1)\n"
        "print(json.dumps({'n': len(r['token_ids']), 'torch': sys.modules.get('torch') is not None}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"n": 4, "torch": False}


@pytest.mark.model
def test_a_request_longer_than_the_context_is_refused_before_generating(genai_path, genai_lm):
    from deco_middleware.errors import PromptTooLongError

    context = genai_lm.config["max_position_embeddings"]
    assert context == json.loads((genai_path / "genai_config.json").read_text())["model"]["context_length"]
    with pytest.raises(PromptTooLongError, match=rf"context holds {context} positions.*at most \d+"):
        generate_text_genai("Hi", model=genai_lm, max_new_tokens=context, seed=0)


# -- refusals, on tiny Llamas built by the real builder (seconds) -------------------------------------------


def _tiny_folder(path: Path, *, tied: bool, vocab_size: int = 256) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from conftest import make_tiny_tokenizer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        tie_word_embeddings=tied,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_genai")
    _tiny_folder(root / "hf", tied=True)
    # with vocab_size == intermediate_size (128) genai 0.18's builder feeds the LM head from layer 0's
    # post-attention norm instead of the final norm (found here; tied or not): logits != h @ W^T
    _tiny_folder(root / "hf-bad-head", tied=True, vocab_size=128)
    return root


@pytest.fixture(scope="module")
def tiny_genai(tiny_root) -> Path:
    from deco_middleware.genai.export import export_genai

    report = export_genai(tiny_root / "hf", tiny_root / "genai", name="tiny-llama")
    assert report.parity["max_abs_diff_logits_vs_lm_head"] <= PARITY_ATOL and report.parity["tied_word_embeddings"]
    return tiny_root / "genai"


def _build_raw(source: Path, out: Path, *, hidden_states: bool = True) -> Path:
    """genai's builder run directly, without our validation (what a user may hand us)."""
    from deco_middleware.genai.export import _run_builder, builder_command

    command = builder_command(source, out, out.parent / f"{out.name}-cache")
    _run_builder(command if hidden_states else command[:-2], out.parent / f"{out.name}.log")
    return out


def test_a_model_without_the_hidden_state_output_is_refused(tiny_root):
    folder = _build_raw(tiny_root / "hf", tiny_root / "raw-no-hidden", hidden_states=False)
    with pytest.raises(MissingHiddenStateOutputError, match=r"no `hidden_states` output.*deco export-lm MODEL OUT --format genai"):
        GenaiCausalLM(folder)


def test_a_builder_whose_logits_are_not_h_times_w_is_refused_at_export_and_nothing_is_kept(tiny_root):
    from deco_middleware.genai.export import GenaiExportError, export_genai

    with pytest.raises(GenaiExportError, match=r"not the LM head applied to its hidden state.*--format genai"):
        export_genai(tiny_root / "hf-bad-head", tiny_root / "bad-out")
    assert not (tiny_root / "bad-out").exists()
    assert not [p for p in tiny_root.iterdir() if p.name.startswith(".bad-out")]


def test_a_builder_whose_logits_are_not_h_times_w_is_refused_at_load(tiny_root, tiny_genai):
    folder = _build_raw(tiny_root / "hf-bad-head", tiny_root / "raw-bad-head")
    with pytest.raises(GenaiModelError, match=r"max \|logits - h @ W\^T\| = .*deco export-lm MODEL OUT --format genai"):
        GenaiCausalLM(folder)
    assert GenaiCausalLM(tiny_genai).check_lm_head() <= PARITY_ATOL  # a faithful build passes the same check


def test_heads_for_another_model_are_refused(tiny_genai):
    with pytest.raises(IncompatibleHeadsError, match="do not fit the model `tiny-llama`"):
        OnnxGenerator(GenaiCausalLM(tiny_genai), "smollm2-135m-instruct")


def test_a_transformers_folder_passed_as_a_genai_model_names_the_build_command(tmp_path):
    from deco_middleware.genai import resolve_genai_model

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="--format genai"):
        resolve_genai_model(tmp_path)


@pytest.mark.model
def test_bench_times_the_genai_loop_with_and_without_heads_against_the_ort_loop(genai_lm, ort_lm, heads, tokenizer):
    from deco_middleware.bench import run_bench, to_markdown

    result = run_bench(None, None, heads, batch_sizes=[2], new_tokens=4, repeats=1, ort_lm=ort_lm,
                       ort_tokenizer=tokenizer, genai_lm=genai_lm, genai_tokenizer=tokenizer)
    genai = [run for run in result["runs"] if run["backend"] == "genai"]
    assert len(genai) == 1 and genai[0]["time_ratio"] > 0 and genai[0]["autodeco_tokens_per_s"] > 0
    assert set(result["heads_step_us"]) == {"ort", "genai"}
    table = to_markdown(result)
    assert "| genai | 2 |" in table and "onnxruntime-genai loop vs our ORT loop" in table


# -- the CLI -------------------------------------------------------------------------------------------------


def _cli(*args: str):
    typer_testing = pytest.importorskip("typer.testing")
    from deco_middleware.cli.app import app

    return typer_testing.CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.model
def test_cli_generate_json_is_the_ort_backends_json(genai_path, ort_lm):
    args = ("generate", "What is 2+2?", "--max-new-tokens", "6", "--seed", "3", "--json")
    genai = _cli(*args, "--backend", "genai")
    assert genai.exit_code == 0, genai.output
    ours = json.loads(_cli(*args, "--backend", "ort").stdout)
    theirs = json.loads(genai.stdout)
    assert theirs["backend"] == "genai" and set(theirs) == set(ours)
    floats = ("temperature", "top_p", "backend")
    assert {k: v for k, v in theirs.items() if k not in floats} == {k: v for k, v in ours.items() if k not in floats}
    for key in ("temperature", "top_p"):
        np.testing.assert_allclose(theirs[key], ours[key], atol=TP_ATOL, rtol=0)


@pytest.mark.model
def test_cli_trace_runs_on_genai_and_records_every_step(genai_path, ort_lm, tmp_path):
    paths = {b: tmp_path / f"{b}.json" for b in ("genai", "ort")}
    for backend, path in paths.items():
        done = _cli("trace", "Name a colour.", "--max-new-tokens", "6", "--seed", "2", "--quiet",
                    "--backend", backend, "--json", str(path))
        assert done.exit_code == 0, done.output
    genai, ort = (json.loads(paths[b].read_text()) for b in ("genai", "ort"))
    assert genai["token_ids"] == ort["token_ids"] and len(genai["token_ids"]) >= 1
    assert all(n >= 1 for n in genai["nucleus_size"]) and all(0 < p <= 1 for p in genai["token_prob"])
    np.testing.assert_allclose(genai["temperature"], ort["temperature"], atol=TP_ATOL, rtol=0)
    np.testing.assert_allclose(genai["token_prob"], ort["token_prob"], atol=1e-3, rtol=0)


def test_cli_export_lm_format_genai_writes_the_validated_build(tiny_root, tmp_path):
    done = _cli("export-lm", str(tiny_root / "hf"), str(tmp_path / "out"), "--format", "genai")
    assert done.exit_code == 0, done.output
    info = json.loads((tmp_path / "out" / GENAI_EXPORT_INFO_NAME).read_text())
    assert info["parity"]["max_abs_diff_logits"] <= PARITY_ATOL and info["base_model"]["vocab_size"] == 256
