"""`deco import-reference` / `export-reference`: reference (AutoDeco) checkpoints <-> our ONNX heads.

The released checkpoints cannot be downloaded here, so every test builds its checkpoint in the
reference's exact layout (config.json with model_type "autodeco"; tensors temp_head.mlp.{0,2}.* and
top_p_head.mlp.{0,2}.*; merged checkpoints with `llm.`-prefixed base shards and an index) from
random weights, written with the `safetensors` library itself (not with our writer). The reference
modules are re-implemented below from the formulas, independently of heads/modules.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
safetensors_torch = pytest.importorskip("safetensors.torch")
nn = torch.nn

from deco_middleware.errors import CheckpointFormatError, IncompatibleHeadsError, ReferenceCheckpointError  # noqa: E402
from deco_middleware.heads.artifact import DecodingHeads, export_heads  # noqa: E402
from deco_middleware.manifest import HeadArchitecture, HeadManifest  # noqa: E402
from deco_middleware.reference import UnknownReferenceKeysWarning, export_reference, import_reference  # noqa: E402
from deco_middleware.reference.base_model import local_base_model  # noqa: E402
from deco_middleware.reference.safetensors_io import SafetensorsFile  # noqa: E402

HIDDEN, VOCAB = 32, 300


# -- the reference modules, from the formulas (issue #15 / METHOD.md), not from our code ---------------


class RefTempHead(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, 1), nn.Sigmoid())

    def forward(self, h):
        return self.mlp(h) * 2


class RefTopPHead(nn.Module):
    def __init__(self, hidden: int, enhanced: bool) -> None:
        super().__init__()
        self.enhanced = enhanced
        self.mlp = nn.Sequential(nn.Linear(hidden + 1 + (4 if enhanced else 0), 256), nn.ReLU(), nn.Linear(256, 1),
                                 nn.Sigmoid())

    def forward(self, h, t, logits):
        if not self.enhanced:
            return self.mlp(torch.cat([h, t], dim=-1))
        probs = torch.softmax(logits / (t + 1e-8), dim=-1)
        max_prob = probs.max(dim=-1, keepdim=True).values
        entropy = -(probs * torch.log(probs + 1e-8)).sum(dim=-1, keepdim=True)
        var = probs.var(dim=-1, keepdim=True)  # unbiased
        top5 = probs.topk(5, dim=-1).values.sum(dim=-1, keepdim=True)
        return self.mlp(torch.cat([h, t, max_prob, entropy, var, top5], dim=-1))


class RefHeads(nn.Module):
    def __init__(self, hidden: int, enhanced: bool = True) -> None:
        super().__init__()
        self.temp_head = RefTempHead(hidden)
        self.top_p_head = RefTopPHead(hidden, enhanced)

    def forward(self, h, logits):
        t = self.temp_head(h)
        return t.squeeze(-1), self.top_p_head(h, t, logits).squeeze(-1)


def reference_heads(hidden: int, *, enhanced: bool = True, seed: int = 0) -> RefHeads:
    torch.manual_seed(seed)
    heads = RefHeads(hidden, enhanced)
    with torch.no_grad():  # spread the outputs over (0, 2) and (0, 1) instead of ~1.0 and ~0.5
        for layer in (heads.temp_head.mlp[2], heads.top_p_head.mlp[2]):
            layer.weight.mul_(20.0)
    return heads.eval()


# -- checkpoints in the reference layout ---------------------------------------------------------------


def write_base_model(folder: Path, *, hidden: int = HIDDEN, vocab: int = VOCAB, seed: int = 0,
                     model_type: str = "llama") -> Path:
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "model.embed_tokens.weight": torch.randn(vocab, hidden, generator=generator),
        "model.norm.weight": torch.ones(hidden),
        "lm_head.weight": torch.randn(vocab, hidden, generator=generator),
    }
    safetensors_torch.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": model_type, "hidden_size": hidden,
              "vocab_size": vocab, "num_hidden_layers": 2, "tie_word_embeddings": False, "dtype": "float32",
              "transformers_version": "4.57.1"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_checkpoint(folder: Path, heads: RefHeads, base: Path, *, dtype=torch.float32, layout: str = "heads-only",
                     temperature: bool = True, top_p: bool = True, old_flags: bool = False,
                     config_changes: dict | None = None, tensor_changes=None) -> Path:
    """A reference checkpoint as the reference writes it (`merge_autodeco.py split` / `merge`)."""
    folder.mkdir(parents=True)
    base_config = json.loads((base / "config.json").read_text())
    # AutoDecoModelForCausalLMConfig(**base_config.to_dict()) + save_pretrained
    config = {**base_config, "model_type": "autodeco", "architectures": ["AutoDecoModelForCausalLM"],
              "base_model_type": base_config["model_type"], "base_model_name_or_path": str(base),
              "use_enhanced_features": heads.top_p_head.enhanced,
              "temperature_hidden_size": base_config["hidden_size"], "top_p_hidden_size": base_config["hidden_size"]}
    if old_flags:
        config.update(train_temp=temperature, train_top_p=top_p)
    else:
        config.update(enable_temperature_head=temperature, enable_top_p_head=top_p)
    config.update(config_changes or {})
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    head_tensors = {k: v.detach().to(dtype).contiguous() for k, v in heads.state_dict().items()}
    if tensor_changes:
        tensor_changes(head_tensors)
    if layout == "heads-only":
        safetensors_torch.save_file(head_tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:  # merged: base shards with `llm.` keys, the heads forced into the last shard, an index json
        base_tensors = safetensors_torch.load_file(str(base / "model.safetensors"))
        names = sorted(base_tensors)
        shards = {"model-00001-of-00002.safetensors": names[:1], "model-00002-of-00002.safetensors": names[1:]}
        weight_map = {}
        for shard_name, keys in shards.items():
            tensors = {f"llm.{k}": base_tensors[k].to(dtype) for k in keys}
            if shard_name.startswith("model-00002"):
                tensors.update(head_tensors)
            safetensors_torch.save_file(tensors, str(folder / shard_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard_name))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_base_model(tmp_path_factory.mktemp("base") / "tiny-llama")


def sample_inputs(seed: int = 1, batch: int = 6):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, HIDDEN, generator=generator) * 2, torch.randn(batch, VOCAB, generator=generator) * 6


def folder_is_clean(parent: Path, name: str) -> bool:
    """No output folder and no staging leftovers (.NAME.*.tmp) next to it."""
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# -- parity with the reference modules -----------------------------------------------------------------

CASES = {
    "heads-only-fp32": dict(layout="heads-only", dtype=torch.float32),
    "heads-only-bf16": dict(layout="heads-only", dtype=torch.bfloat16),
    "merged-bf16": dict(layout="merged", dtype=torch.bfloat16),
    "merged-fp32-top-p-off": dict(layout="merged", dtype=torch.float32, top_p=False),
    "heads-only-fp16-old-flags-temperature-off": dict(layout="heads-only", dtype=torch.float16, temperature=False,
                                                      old_flags=True),
    "heads-only-fp32-plain-features": dict(layout="heads-only", dtype=torch.float32, enhanced=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_heads_equal_the_reference_modules(case, base, tmp_path):
    options = dict(CASES[case])
    enhanced = options.pop("enhanced", True)
    dtype = options["dtype"]
    reference = reference_heads(HIDDEN, enhanced=enhanced, seed=len(case))
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference, base, **options)
    report = import_reference(checkpoint, tmp_path / "onnx" / "imported", model=str(base))
    heads = DecodingHeads.from_pretrained(report.directory)

    # The reference evaluated on the very weights stored (widened exactly from bf16/fp16 to float32).
    stored = RefHeads(HIDDEN, enhanced).eval()
    stored.load_state_dict({k: v.to(dtype).float() for k, v in reference.state_dict().items()})
    h, logits = sample_inputs()
    with torch.no_grad():
        t_ref, p_ref = stored(h, logits)
    t, p = heads.run(h.numpy(), logits.numpy())
    np.testing.assert_allclose(t, t_ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(p, p_ref.numpy(), atol=1e-5, rtol=0)
    assert t.std() > 0.05 and p.std() > 0.02  # the comparison is not between constants
    if dtype == torch.bfloat16:
        # The import itself adds no error for bf16 (the weights widen exactly: the 1e-5 check above). Against
        # the reference running every op in bf16, as inside a bf16 model, the gap is bf16's own rounding
        # (8-bit mantissa, a 300-way softmax and its variance in bf16, output layers scaled x20): measured max
        # 0.037 on T and 0.12 on P over 20 seeds x 2 variants x 64 rows. Stated bounds: 0.08 (T), 0.25 (P).
        bf16 = RefHeads(HIDDEN, enhanced).eval().to(torch.bfloat16)
        bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()})
        with torch.no_grad():
            t_bf, p_bf = bf16(h.bfloat16(), logits.bfloat16())
        np.testing.assert_allclose(t, t_bf.float().numpy(), atol=0.08, rtol=0)
        np.testing.assert_allclose(p, p_bf.float().numpy(), atol=0.25, rtol=0)

    manifest = heads.manifest
    expected_trained = [name for name, on in (("temperature", options.get("temperature", True)),
                                              ("top_p", options.get("top_p", True))) if on]
    assert list(heads.trained_heads) == expected_trained
    assert manifest.heads.enhanced_features is enhanced
    assert manifest.base_model == local_base_model(str(base)).identity
    source = manifest.source
    assert source["format"] == "autodeco-reference" and source["layout"] == options["layout"]
    assert source["format_version"] == (1 if options.get("old_flags") else 2)
    assert source["dtype"] == {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint.iterdir()}
    assert source["files"] and all(on_disk[f["file"]] == f["sha256"] for f in source["files"])
    assert "config.json" in {f["file"] for f in source["files"]}


def test_our_reader_matches_the_safetensors_library(base, tmp_path):
    generator = torch.Generator().manual_seed(3)
    tensors = {"a": torch.randn(5, 7, generator=generator).bfloat16(), "b": torch.randn(3, generator=generator).half(),
               "c": torch.randn(2, 2, generator=generator), "empty": torch.zeros(0, 4)}
    path = tmp_path / "x.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    ours = SafetensorsFile(path)
    for name, tensor in tensors.items():
        assert ours.dtype(name) == {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[tensor.dtype]
        np.testing.assert_array_equal(ours.read(name), tensor.float().numpy())
    np.testing.assert_array_equal(ours.read("a", rows=np.array([0, 4])), tensors["a"].float().numpy()[[0, 4]])


# -- round trip ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("enhanced", [True, False])
def test_import_export_import_is_bit_identical(enhanced, base, tmp_path):
    reference = reference_heads(HIDDEN, enhanced=enhanced, seed=7)
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference, base, dtype=torch.bfloat16, top_p=enhanced)
    first = import_reference(checkpoint, tmp_path / "first", model=str(base)).directory
    exported = export_reference(first, tmp_path / "exported", model=str(base)).directory
    second = import_reference(exported, tmp_path / "second", model=str(base)).directory
    again = export_reference(second, tmp_path / "again", model=str(base)).directory

    assert (first / "heads.onnx").read_bytes() == (second / "heads.onnx").read_bytes()
    one, two = HeadManifest.load(first / "manifest.json"), HeadManifest.load(second / "manifest.json")
    assert (one.heads, one.base_model, one.onnx) == (two.heads, two.base_model, two.onnx)
    assert (exported / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()

    # What the reference itself loads: the config it reads and a strict load_state_dict of the tensors.
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "autodeco" and config["architectures"] == ["AutoDecoModelForCausalLM"]
    assert config["base_model_type"] == "llama" and config["hidden_size"] == HIDDEN
    assert config["temperature_hidden_size"] == config["top_p_hidden_size"] == HIDDEN
    assert config["enable_temperature_head"] is True and config["enable_top_p_head"] is enhanced
    assert config["use_enhanced_features"] is enhanced
    loaded = safetensors_torch.load_file(str(exported / "model.safetensors"))
    rebuilt = RefHeads(HIDDEN, enhanced)
    rebuilt.load_state_dict(loaded, strict=True)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor.bfloat16().float(), rtol=0, atol=0)


def test_export_refuses_heads_the_reference_cannot_express(base, tmp_path):
    from deco_middleware.heads.modules import AutoDecoHeads

    identity = local_base_model(str(base)).identity
    narrow = AutoDecoHeads(HIDDEN, inner_size=8).numpy_weights()
    export_heads(narrow, tmp_path / "narrow", base_model=identity,
                 architecture=HeadArchitecture(temperature_hidden_size=8, top_p_hidden_size=8))
    with pytest.raises(ReferenceCheckpointError, match=r"temperature_hidden_size=8 \(the reference's MLPs are 256 wide\)"):
        export_reference(tmp_path / "narrow", tmp_path / "out", model=str(base))
    export_heads(AutoDecoHeads(HIDDEN).numpy_weights(), tmp_path / "hot", base_model=identity,
                 architecture=HeadArchitecture(max_temperature=3.0))
    with pytest.raises(ReferenceCheckpointError, match=r"max_temperature=3.0 \(the reference computes T = 2 \* sigmoid\)"):
        export_reference(tmp_path / "hot", tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


def test_export_refuses_a_graph_that_is_not_the_reference_architecture(base, tmp_path):
    import onnx

    from deco_middleware.manifest import sha256_file

    identity = local_base_model(str(base)).identity
    heads_dir = tmp_path / "heads"
    export_heads({k: v.numpy() for k, v in reference_heads(HIDDEN).state_dict().items()}, heads_dir, base_model=identity)
    graph = onnx.load(str(heads_dir / "heads.onnx"))
    relu = next(node for node in graph.graph.node if node.op_type == "Relu")
    relu.op_type = "LeakyRelu"  # same weights, same IO: only the computation differs
    onnx.save(graph, str(heads_dir / "heads.onnx"))
    manifest = json.loads((heads_dir / "manifest.json").read_text())
    manifest["onnx"]["sha256"] = sha256_file(heads_dir / "heads.onnx")
    (heads_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ReferenceCheckpointError, match=r"computes something other than the reference heads"):
        export_reference(heads_dir, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


def test_export_refuses_another_base_model(base, tmp_path):
    identity = local_base_model(str(base)).identity
    export_heads({k: v.numpy() for k, v in reference_heads(HIDDEN).state_dict().items()}, tmp_path / "heads",
                 base_model=identity)
    other = write_base_model(tmp_path / "other", seed=9)
    with pytest.raises(IncompatibleHeadsError, match="LM-head weight fingerprint differs"):
        export_reference(tmp_path / "heads", tmp_path / "out", model=str(other))
    assert folder_is_clean(tmp_path, "out")


# -- bad input: an error naming the file and the fix, and no partial output ----------------------------


def _drop(name):
    return lambda tensors: tensors.pop(name)


def _add(name, value):
    return lambda tensors: tensors.__setitem__(name, value)


BAD_CHECKPOINTS = {
    "missing key": (dict(tensor_changes=_drop("top_p_head.mlp.2.bias")), ReferenceCheckpointError,
                    r"lacks head tensors top_p_head\.mlp\.2\.bias.*merge_autodeco\.py split"),
    "unknown head key": (dict(tensor_changes=_add("temp_head.mlp.4.weight", torch.zeros(1, 1))),
                         ReferenceCheckpointError, r"does not have: temp_head\.mlp\.4\.weight"),
    "unknown other key": (dict(tensor_changes=_add("value_head.weight", torch.zeros(1, 1))),
                          ReferenceCheckpointError, r"does not have: value_head\.weight"),
    "base model type": (dict(config_changes={"base_model_type": "qwen2"}), ReferenceCheckpointError,
                        r"trained for a `qwen2` model, but --model .* is a `llama` model"),
    "no base model type": (dict(config_changes={"base_model_type": None}), ReferenceCheckpointError,
                           r"has no `base_model_type`"),
    "config hidden size": (dict(config_changes={"hidden_size": 64}), ReferenceCheckpointError,
                           r"has hidden_size=64, but --model .* has 32"),
    "config vocab size": (dict(config_changes={"vocab_size": 301}), ReferenceCheckpointError,
                          r"has vocab_size=301, but --model .* has 300"),
    "not autodeco": (dict(config_changes={"model_type": "llama"}), ReferenceCheckpointError,
                     r"model_type 'llama', not 'autodeco'"),
    "both heads off": (dict(temperature=False, top_p=False), ReferenceCheckpointError, r"enables neither head"),
    "flag not a bool": (dict(config_changes={"enable_top_p_head": "yes"}), ReferenceCheckpointError,
                        r"`enable_top_p_head` must be true or false, got 'yes'"),
    "features flag vs weights": (dict(config_changes={"use_enhanced_features": False}), ReferenceCheckpointError,
                                 r"fits use_enhanced_features=True, but the config says False"),
    "scalar weight": (dict(tensor_changes=_add("temp_head.mlp.0.weight", torch.tensor(1.0))), ReferenceCheckpointError,
                      r"`temp_head\.mlp\.0\.weight` has shape \[\], expected \[256, 32\]"),
    "nan weights": (dict(tensor_changes=_add("temp_head.mlp.2.bias", torch.tensor([float("nan")]))),
                    ReferenceCheckpointError, r"temp_head\.mlp\.2\.bias hold NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_fails_with_the_fix_and_writes_nothing(case, base, tmp_path):
    changes, error, message = BAD_CHECKPOINTS[case]
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base, **changes)
    with pytest.raises(error, match=message):
        import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


def test_heads_for_another_hidden_size_fail_on_their_shape(base, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(48), base)  # config says 32, weights 48
    with pytest.raises(ReferenceCheckpointError,
                       match=r"model\.safetensors: `temp_head\.mlp\.0\.weight` has shape \[256, 48\], expected \[256, 32\]"
                             r".*hidden size 48\. Pass --model the base model"):
        import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


def test_merged_checkpoint_of_another_base_model_fails(base, tmp_path):
    other = write_base_model(tmp_path / "other", seed=5)
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), other, layout="merged")
    with pytest.raises(ReferenceCheckpointError, match=r"merged checkpoint whose own base weights \(`llm\.lm_head\.weight`\)"
                                                       r" differ from --model"):
        import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


def test_a_missing_shard_of_a_merged_checkpoint_fails(base, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base, layout="merged")
    (checkpoint / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match=r"lists shard model-00001-of-00002\.safetensors, which is missing"):
        import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


def test_one_safetensors_file_can_be_named_directly(base, tmp_path):
    reference = reference_heads(HIDDEN, seed=4)
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference, base)
    (checkpoint / "model.safetensors").rename(checkpoint / "autodeco_heads.safetensors")  # the README's name
    heads = DecodingHeads.from_pretrained(
        import_reference(checkpoint / "autodeco_heads.safetensors", tmp_path / "out", model=str(base)).directory)
    h, logits = sample_inputs()
    with torch.no_grad():
        t_ref, p_ref = reference(h, logits)
    t, p = heads.run(h.numpy(), logits.numpy())
    np.testing.assert_allclose(t, t_ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(p, p_ref.numpy(), atol=1e-5, rtol=0)


def test_newer_reference_config_warns_on_unknown_keys_and_imports(base, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base,
                                  config_changes={"temperature_head_layers": 3, "autodeco_version": "2.0"})
    with pytest.warns(UnknownReferenceKeysWarning, match=r"keys this version does not know and will ignore: "
                                                         r"autodeco_version, temperature_head_layers"):
        report = import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert report.unknown_keys == ["autodeco_version", "temperature_head_layers"]
    DecodingHeads.from_pretrained(tmp_path / "out")


def test_pickle_checkpoints_are_refused_without_unpickling(base, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base)
    (checkpoint / "model.safetensors").unlink()
    # A pickle that would run code if loaded: refusing it must not depend on what it contains.
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR.")
    for target in (checkpoint, checkpoint / "pytorch_model.bin"):
        with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin is a pickle-based checkpoint.*never "
                                                        r"unpickles.*save_file"):
            import_reference(target, tmp_path / "out", model=str(base))
    # torch.save output renamed to .safetensors is recognised by its zip magic.
    torch.save(reference_heads(HIDDEN).state_dict(), checkpoint / "model.safetensors")
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors is a zip archive \(torch\.save\), not safetensors"):
        import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out") and not Path("pwned").exists()
    # Trainer folders keep a pickled training_args.bin next to the safetensors: it is never opened.
    (checkpoint / "model.safetensors").unlink()
    safetensors_torch.save_file(reference_heads(HIDDEN).state_dict(), str(checkpoint / "model.safetensors"))
    (checkpoint / "training_args.bin").write_bytes((checkpoint / "pytorch_model.bin").read_bytes())
    assert import_reference(checkpoint, tmp_path / "out", model=str(base)).layout == "heads-only"


@pytest.mark.parametrize("cut", ["data", "header", "length"])
def test_truncated_safetensors_are_refused(cut, base, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base)
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    header_size = struct.unpack("<Q", data[:8])[0]
    keep = {"data": len(data) - 100, "header": 8 + header_size // 2, "length": 5}[cut]
    path.write_bytes(data[:keep])
    message = {"data": r"model\.safetensors is truncated: tensor `.*` ends at byte",
               "header": r"model\.safetensors is truncated: its header needs",
               "length": r"too short for a safetensors file"}[cut]
    with pytest.raises(CheckpointFormatError, match=message):
        import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


def test_oversized_or_malformed_headers_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointFormatError, match=r"declares a 1000000000000-byte header, over the"):
        SafetensorsFile(path)
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(CheckpointFormatError, match=r"duplicate key 'a'"):
        SafetensorsFile(path)
    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointFormatError, match=r"malformed safetensors header \(RecursionError"):
        SafetensorsFile(path)
    header = b'{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(CheckpointFormatError, match=r"dtype 'I64'"):
        SafetensorsFile(path)
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(CheckpointFormatError, match=r"8 bytes after its last tensor"):
        SafetensorsFile(path)


def test_mutated_safetensors_fail_only_with_our_error(tmp_path):
    """300 seeded mutations of a valid file: each one loads or raises CheckpointFormatError, nothing else."""
    tensors = {"temp_head.mlp.0.weight": torch.randn(4, 3).bfloat16(), "top_p_head.mlp.2.bias": torch.randn(1)}
    source = tmp_path / "good.safetensors"
    safetensors_torch.save_file(tensors, str(source))
    original = source.read_bytes()
    header_end = 8 + struct.unpack("<Q", original[:8])[0]
    rng = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(300):
        data = bytearray(original)
        kind = trial % 3
        if kind == 0:  # flip bytes, mostly in the header where the structure lives
            for position in rng.integers(0, header_end, size=int(rng.integers(1, 4))):
                data[position] = int(rng.integers(0, 256))
        elif kind == 1:  # truncate anywhere
            data = data[: int(rng.integers(0, len(data)))]
        else:  # grow or shrink the declared header length
            data[:8] = struct.pack("<Q", max(0, header_end - 8 + int(rng.integers(-40, 40))))
        path = tmp_path / f"m{trial}.safetensors"
        path.write_bytes(bytes(data))
        try:
            weights = SafetensorsFile(path)
            for name in weights.keys():
                weights.read(name)
            outcomes["loaded"] += 1
        except CheckpointFormatError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 200 and sum(outcomes.values()) == 300


def test_existing_output_is_kept_unless_overwrite(base, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"already exists.*--overwrite"):
        import_reference(checkpoint, out, model=str(base))
    assert (out / "keep.txt").read_text() == "mine"
    import_reference(checkpoint, out, model=str(base), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["heads.onnx", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_a_failure_while_writing_leaves_no_partial_folder(base, tmp_path, monkeypatch):
    """The staged folder is removed when the final check fails (here: the heads do not load)."""
    from deco_middleware.heads import artifact

    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base)

    def fail(directory, *args, **kwargs):
        raise RuntimeError(f"disk full while checking {directory}")

    monkeypatch.setattr(artifact, "DecodingHeads", fail)  # failure injection, after heads.onnx was written
    with pytest.raises(RuntimeError, match="disk full"):
        import_reference(checkpoint, tmp_path / "out", model=str(base))
    assert folder_is_clean(tmp_path, "out")


# -- the command line ---------------------------------------------------------------------------------


def test_cli_round_trip_and_errors(base, tmp_path):
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app

    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base, dtype=torch.bfloat16,
                                  layout="merged")
    runner = CliRunner()
    result = runner.invoke(app, ["import-reference", str(checkpoint), "--model", str(base), "--out",
                                 str(tmp_path / "heads"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["layout"] == "merged" and summary["source_dtype"] == "BF16"
    assert summary["trained"] == ["temperature", "top_p"]
    result = runner.invoke(app, ["export-reference", str(tmp_path / "heads"), "--model", str(base), "--out",
                                 str(tmp_path / "ref"), "--base-model-name-or-path", "org/tiny-llama"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["base_model_name_or_path"] == "org/tiny-llama"
    result = runner.invoke(app, ["import-reference", str(tmp_path / "ref"), "--model", str(base), "--out",
                                 str(tmp_path / "heads")])
    assert result.exit_code == 2
    assert "already exists" in result.stderr and result.stdout == ""


def test_cli_prints_config_warnings_on_stderr_and_keeps_json_pure(base, tmp_path):
    from typer.testing import CliRunner

    from deco_middleware.cli.app import app

    checkpoint = write_checkpoint(tmp_path / "ckpt", reference_heads(HIDDEN), base,
                                  config_changes={"temperature_head_layers": 3})
    result = CliRunner().invoke(app, ["import-reference", str(checkpoint), "--model", str(base), "--out",
                                      str(tmp_path / "heads"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unknown_keys"] == ["temperature_head_layers"]
    assert "warning:" in result.stderr and "temperature_head_layers" in result.stderr


# -- the real default model ---------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("top_p", [True, False])
def test_imported_heads_drive_generate_on_the_default_model(top_p, tmp_path):
    """Per-token T and P recorded by the session equal the reference formula on the captured hidden states."""
    from deco_middleware.default_model import ensure_default_model, load_model
    from deco_middleware.generation import chat_inputs
    from deco_middleware.hf import LearnedDecoding

    model, tokenizer = load_model("default")
    hidden = model.config.hidden_size
    reference = reference_heads(hidden, seed=11)
    base_path = ensure_default_model()
    checkpoint = write_checkpoint(tmp_path / "ckpt", reference, base_path, dtype=torch.bfloat16, top_p=top_p,
                                  config_changes={"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    report = import_reference(checkpoint, tmp_path / "onnx" / "smollm2-reference", model="default")
    stored = RefHeads(hidden).eval()
    stored.load_state_dict({k: v.bfloat16().float() for k, v in reference.state_dict().items()})

    captured = []  # (hidden state, logits) of the last position at every forward pass
    handle = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, out: captured.append((args[0][:, -1].detach().clone(), out[:, -1].detach().clone())))
    decoding = LearnedDecoding(report.directory, record_trace=True)
    inputs = chat_inputs(tokenizer, ["Name three prime numbers."])
    torch.manual_seed(0)
    try:
        with decoding.attach(model) as session:
            session.generate(**inputs, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    finally:
        handle.remove()
    steps = session.trace.steps
    assert len(steps) >= 4 and len(captured) >= len(steps)
    h = torch.cat([c[0] for c in captured[: len(steps)]]).float()
    logits = torch.cat([c[1] for c in captured[: len(steps)]]).float()
    with torch.no_grad():
        t_ref, p_ref = stored(h, logits)
    recorded_t = np.array([s.temperature[0] for s in steps])
    recorded_p = np.array([s.top_p[0] for s in steps])
    np.testing.assert_allclose(recorded_t, t_ref.numpy(), atol=1e-5, rtol=0)  # T = T_pred * 1
    if top_p:
        np.testing.assert_allclose(recorded_p, p_ref.clamp(0, 1).numpy(), atol=1e-5, rtol=0)
    else:  # a disabled head is ignored: P = 1 (the reference's T still feeds nothing else)
        np.testing.assert_array_equal(recorded_p, np.ones(len(steps)))
    assert recorded_t.std() > 0.01


@pytest.mark.model
def test_shipped_heads_export_and_import_back_bit_identical(tmp_path):
    """The README's worked round trip: shipped heads -> reference checkpoint -> our heads again."""
    exported = export_reference("smollm2-135m-instruct", tmp_path / "ref", model="default").directory
    back = import_reference(exported, tmp_path / "back", model="default").directory
    shipped = DecodingHeads.from_pretrained("smollm2-135m-instruct")
    assert (back / "heads.onnx").read_bytes() == shipped.onnx_path.read_bytes()
    assert HeadManifest.load(back / "manifest.json").heads == shipped.manifest.heads
