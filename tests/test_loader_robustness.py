"""Loading heads is a security boundary: every bad manifest or ONNX file is one clean error from the root.

Each case here escaped as a raw exception, loaded a graph that broke mid-generate, or read a file
outside the heads folder before the fix (issue #18, items 2-5). The bad graphs are built by hand from
a real export, and every load runs real ONNX Runtime sessions. torch is not needed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from deco_middleware import (
    DecodingHeads,
    HeadManifest,
    IntegrityError,
    ManifestError,
    ManifestVersionError,
    export_heads,
)
from deco_middleware.errors import DecoError
from deco_middleware.fingerprint import METHOD, fingerprint_from_matrix
from deco_middleware.manifest import FORMAT_VERSION, MANIFEST_NAME, ONNX_NAME, BaseModelIdentity, LMHeadFingerprint, sha256_file

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HIDDEN, VOCAB = 16, 64


def numpy_heads_weights(hidden: int, seed: int = 0, width: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    return {
        "temp_head.mlp.0.weight": w(width, hidden), "temp_head.mlp.0.bias": w(width),
        "temp_head.mlp.2.weight": w(1, width), "temp_head.mlp.2.bias": w(1),
        "top_p_head.mlp.0.weight": w(width, hidden + 5), "top_p_head.mlp.0.bias": w(width),
        "top_p_head.mlp.2.weight": w(1, width), "top_p_head.mlp.2.bias": w(1),
    }


def synthetic_identity(seed: int = 0) -> BaseModelIdentity:
    lm_head = np.random.default_rng(seed).standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    return BaseModelIdentity(name="synthetic", architecture="SyntheticForCausalLM", hidden_size=HIDDEN, vocab_size=VOCAB,
                             lm_head_fingerprint=LMHeadFingerprint(method=METHOD, values=fingerprint_from_matrix(lm_head)))


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("good_heads")
    export_heads(numpy_heads_weights(HIDDEN), directory, base_model=synthetic_identity())
    return directory


@pytest.fixture
def heads_dir(good_dir, tmp_path) -> Path:
    target = tmp_path / "heads"
    shutil.copytree(good_dir, target)
    return target


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


def write_graph(directory: Path, model) -> None:
    """Save ``model`` as the heads file and pin its new sha256, so only the graph contract can refuse it."""
    (directory / ONNX_NAME).write_bytes(model.SerializeToString())
    manifest = read_manifest(directory)
    manifest["onnx"]["sha256"] = sha256_file(directory / ONNX_NAME)
    write_manifest(directory, manifest)


def load_error(directory: Path, error: type[DecoError] = DecoError) -> str:
    with pytest.raises(error) as caught:
        DecodingHeads.from_pretrained(directory)
    message = str(caught.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# -- item 2: the sha256 pin covers everything that is loaded ----------------------------------------


def test_external_data_is_refused_before_onnx_runtime(heads_dir):
    model = onnx.load(str(heads_dir / ONNX_NAME))
    onnx.save(model, str(heads_dir / ONNX_NAME), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    manifest = read_manifest(heads_dir)
    manifest["onnx"]["sha256"] = sha256_file(heads_dir / ONNX_NAME)
    write_manifest(heads_dir, manifest)
    message = load_error(heads_dir, IntegrityError)
    assert "external data files (axis_last, axis_one, eps, k5, max_temperature and 10 more)" in message
    assert "save_as_external_data=False" in message
    # Swapping the external file (what the pin could not see) changes nothing: still refused, not loaded.
    (heads_dir / "weights.bin").write_bytes(os.urandom((heads_dir / "weights.bin").stat().st_size))
    assert "external data" in load_error(heads_dir, IntegrityError)


def test_external_data_in_a_node_attribute_is_found(heads_dir):
    model = onnx.load(str(heads_dir / ONNX_NAME))
    constant = helper.make_node("Constant", [], ["unused_constant"], value=numpy_helper.from_array(np.zeros(4, np.float32)))
    tensor = constant.attribute[0].t
    tensor.name = "unused_constant"
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "elsewhere.bin"
    tensor.ClearField("raw_data")
    model.graph.node.insert(0, constant)
    write_graph(heads_dir, model)
    assert "external data files (unused_constant)" in load_error(heads_dir, IntegrityError)


def test_symlinked_manifest_outside_the_folder_is_refused(heads_dir, tmp_path):
    outside = tmp_path / "outside.json"
    shutil.move(heads_dir / MANIFEST_NAME, outside)
    (heads_dir / MANIFEST_NAME).symlink_to(outside)
    message = load_error(heads_dir, ManifestError)
    assert "outside its folder" in message and str(outside) in message
    with pytest.raises(ManifestError, match="outside its folder"):
        HeadManifest.load(heads_dir / MANIFEST_NAME)  # what `deco info` reads


def test_symlinked_manifest_to_etc_passwd_is_refused(heads_dir):
    (heads_dir / MANIFEST_NAME).unlink()
    (heads_dir / MANIFEST_NAME).symlink_to("/etc/passwd")
    assert "outside its folder" in load_error(heads_dir, ManifestError)


def test_symlinked_onnx_outside_the_folder_is_refused(heads_dir, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(heads_dir / ONNX_NAME, outside)
    (heads_dir / ONNX_NAME).symlink_to(outside)
    assert "outside its folder" in load_error(heads_dir, IntegrityError)


def test_a_symlink_that_stays_inside_the_folder_loads(heads_dir):
    shutil.move(heads_dir / ONNX_NAME, heads_dir / "real.onnx")
    (heads_dir / ONNX_NAME).symlink_to("real.onnx")
    DecodingHeads.from_pretrained(heads_dir)


def test_save_pretrained_writes_the_verified_bytes(heads_dir, tmp_path):
    heads = DecodingHeads.from_pretrained(heads_dir)
    original = (heads_dir / ONNX_NAME).read_bytes()
    (heads_dir / ONNX_NAME).write_bytes(b"swapped after loading")
    copy = heads.save_pretrained(tmp_path / "copy")
    assert (copy / ONNX_NAME).read_bytes() == original
    DecodingHeads.from_pretrained(copy)


# -- item 3: every loader error comes from the root, on one line -------------------------------------


def test_invalid_utf8_names_the_file(heads_dir):
    path = heads_dir / MANIFEST_NAME
    path.write_bytes(path.read_bytes().replace(b'"synthetic"', b'"synth\xff\xfetic"'))
    message = load_error(heads_dir, ManifestError)
    assert str(path) in message and "not UTF-8" in message and "invalid start byte" in message


def test_json_nested_1000_deep_is_a_manifest_error(heads_dir):
    manifest = read_manifest(heads_dir)
    for depth in (1000, 100000):  # json.loads itself raises RecursionError here
        text = json.dumps(manifest)[:-1] + ', "training_extra": ' + "[" * depth + "]" * depth + "}"
        (heads_dir / MANIFEST_NAME).write_text(text)
        assert "is JSON nested too deeply to be a manifest" in load_error(heads_dir, ManifestError)
    manifest["training"] = {"deep": json.loads("[" * 100 + "]" * 100)}  # parses, but would strain every walker
    write_manifest(heads_dir, manifest)
    assert "nested deeper than 64 levels" in load_error(heads_dir, ManifestError)


def test_an_integer_over_4300_digits_is_a_manifest_error(heads_dir):
    text = json.dumps(read_manifest(heads_dir)).replace('"format_version": 1', '"format_version": ' + "1" * 5000)
    (heads_dir / MANIFEST_NAME).write_text(text)
    message = load_error(heads_dir, ManifestError)
    assert "not valid JSON" in message and "4300 digits" in message and len(message) < 400


@pytest.mark.parametrize("name", ["x" * 300 + ".onnx", "heads\x00.onnx", "a\\b.onnx", MANIFEST_NAME, "é" * 130])
def test_impossible_onnx_file_names_are_manifest_errors(heads_dir, name):
    manifest = read_manifest(heads_dir)
    manifest["onnx"]["file"] = name
    write_manifest(heads_dir, manifest)
    message = load_error(heads_dir, ManifestError)
    assert "onnx.file" in message and len(message) < 600


def test_validation_errors_are_one_line_with_dotted_names(heads_dir):
    manifest = read_manifest(heads_dir)
    manifest["base_model"]["hidden_size"] = "sixteen"
    manifest["onnx"]["sha256"] = "xyz"
    write_manifest(heads_dir, manifest)
    message = load_error(heads_dir, ManifestError)
    assert "`base_model.hidden_size`: Input should be a valid integer" in message and "`onnx.sha256`" in message


def test_onnx_input_without_a_declared_shape_is_an_integrity_error(heads_dir):
    model = onnx.load(str(heads_dir / ONNX_NAME))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    write_graph(heads_dir, model)
    assert "input `hidden_states` has shape undeclared, expected [batch, 16]" in load_error(heads_dir, IntegrityError)


def test_oversized_model_sizes_are_refused_before_any_allocation(heads_dir):
    manifest = read_manifest(heads_dir)
    manifest["base_model"]["vocab_size"] = 10**12
    write_manifest(heads_dir, manifest)
    assert "`base_model.vocab_size`: Input should be less than or equal to 4194304" in load_error(heads_dir, ManifestError)


# -- item 4: the format-version gate cannot be bypassed by type ---------------------------------------


@pytest.mark.parametrize("version", [str(FORMAT_VERSION + 1), FORMAT_VERSION + 1.0, f"{FORMAT_VERSION + 1}.0", 1e300, "inf"])
def test_a_newer_version_of_any_type_is_refused_as_newer(heads_dir, version):
    manifest = read_manifest(heads_dir)
    manifest["format_version"] = version
    write_manifest(heads_dir, manifest)
    message = load_error(heads_dir, ManifestVersionError)
    assert f"not an integer and reads as newer than {FORMAT_VERSION}" in message and "pip install -U deco-middleware" in message


@pytest.mark.parametrize("version", ["1", 1.0, True, None, [2], "two"])
def test_a_format_version_that_is_not_the_integer_is_refused(heads_dir, version):
    manifest = read_manifest(heads_dir)
    manifest["format_version"] = version
    write_manifest(heads_dir, manifest)
    with pytest.raises(ManifestError) as caught:
        DecodingHeads.from_pretrained(heads_dir)
    assert not isinstance(caught.value, ManifestVersionError)
    assert "format_version" in str(caught.value)


# -- item 5: the graph contract and a probe run at load --------------------------------------------


def retarget(model, old_output: str, new_output: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == old_output:
                node.output[i] = new_output


def add_after(model, output: str, make_nodes) -> None:
    """Rename the producer of ``output`` to ``output_raw`` and append ``make_nodes(raw, output)``."""
    raw = f"{output}_raw"
    retarget(model, output, raw)
    model.graph.node.extend(make_nodes(raw, output))


def const(model, name: str, value) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name=name))
    return name


def swapped_outputs(model) -> None:
    retarget(model, "temperature", "tmp_swap")
    retarget(model, "top_p", "temperature")
    retarget(model, "tmp_swap", "top_p")


def scalar_temperature(model) -> None:
    add_after(model, "temperature", lambda raw, out: [helper.make_node("ReduceMean", [raw], [out], keepdims=0)])
    model.graph.output[0].type.tensor_type.ClearField("shape")


def int_temperature(model) -> None:
    add_after(model, "temperature", lambda raw, out: [helper.make_node("Cast", [raw], [out], to=TensorProto.INT64)])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64


def batch_mean_temperature(model) -> None:
    axis = const(model, "axis0", np.array([0], np.int64))
    add_after(model, "temperature", lambda raw, out: [
        helper.make_node("ReduceMean", [raw, axis], ["t_mean"], keepdims=1),
        helper.make_node("Sub", [raw, raw], ["t_zero"]),
        helper.make_node("Add", ["t_zero", "t_mean"], [out]),
    ])


def doubled_top_p(model) -> None:
    two = const(model, "two", np.array(2.0, np.float32))
    add_after(model, "top_p", lambda raw, out: [helper.make_node("Mul", [raw, two], [out])])


def nan_temperature(model) -> None:
    nan = const(model, "nan", np.array(np.nan, np.float32))
    add_after(model, "temperature", lambda raw, out: [helper.make_node("Mul", [raw, nan], [out])])


def column_temperature(model) -> None:
    axis = const(model, "axis1", np.array([1], np.int64))
    add_after(model, "temperature", lambda raw, out: [helper.make_node("Unsqueeze", [raw, axis], [out])])
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 1


def extra_input(model) -> None:
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch"]))


def fixed_batch(model) -> None:
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].ClearField("dim_param")
        value.type.tensor_type.shape.dim[0].dim_value = 1


def int_hidden_input(model) -> None:
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (swapped_outputs, "output `top_p` is ["),  # T in (0, 2) read as P: out of range
        (scalar_temperature, "output `temperature` is float32 of shape [] for a batch of 3, expected float32 [3]"),
        (int_temperature, "output `temperature` is tensor(int64), expected tensor(float)"),
        (batch_mean_temperature, "the outputs of one row change with the other rows of the batch"),
        (doubled_top_p, "output `top_p` is ["),
        (nan_temperature, "output `temperature` is [nan, nan, nan] on the probe batch, outside (0, 2.0]"),
        (column_temperature, "output `temperature` has shape ['batch', 1], expected [batch]"),
        (extra_input, "inputs are ['hidden_states', 'logits', 'extra']"),
        (fixed_batch, "input `hidden_states` has a fixed batch of 1"),
        (int_hidden_input, "ONNX Runtime could not load"),  # ORT itself refuses the mixed MatMul types
    ],
)
def test_hand_built_bad_graphs_are_refused_at_load(heads_dir, edit, expected):
    model = onnx.load(str(heads_dir / ONNX_NAME))
    edit(model)
    write_graph(heads_dir, model)
    message = load_error(heads_dir, IntegrityError)
    assert expected in message, message
    assert "does not compute the heads its manifest describes" in message or "ONNX Runtime could not load" in message


@pytest.fixture
def unit_range_dir(tmp_path) -> Path:
    """Heads whose T lies in (0, 1) like P, so swapping them passes every range check."""
    from deco_middleware.manifest import HeadArchitecture

    directory = tmp_path / "unit_range"
    export_heads(numpy_heads_weights(HIDDEN), directory, base_model=synthetic_identity(),
                 architecture=HeadArchitecture(max_temperature=1.0))
    DecodingHeads.from_pretrained(directory)
    return directory


def test_swapped_outputs_in_range_are_caught_by_the_logits_check(unit_range_dir):
    model = onnx.load(str(unit_range_dir / ONNX_NAME))
    swapped_outputs(model)
    write_graph(unit_range_dir, model)
    message = load_error(unit_range_dir, IntegrityError)
    assert "output `temperature` changes when only the logits change" in message and "swapped?" in message


def test_temperature_above_the_manifest_maximum_is_refused(heads_dir):
    manifest = read_manifest(heads_dir)
    manifest["heads"]["max_temperature"] = 0.25  # the graph multiplies by 2.0
    write_manifest(heads_dir, manifest)
    assert "outside (0, 0.25]" in load_error(heads_dir, IntegrityError)


def test_io_names_that_point_at_the_wrong_values_are_refused(unit_range_dir):
    manifest = read_manifest(unit_range_dir)
    manifest["io"]["temperature"], manifest["io"]["top_p"] = "top_p", "temperature"
    write_manifest(unit_range_dir, manifest)
    assert "changes when only the logits change" in load_error(unit_range_dir, IntegrityError)


def test_io_names_must_be_distinct(heads_dir):
    manifest = read_manifest(heads_dir)
    manifest["io"]["logits"] = "hidden_states"
    write_manifest(heads_dir, manifest)
    assert "the four io names must be distinct" in load_error(heads_dir, ManifestError)


def test_the_real_export_passes_the_contract_and_probe(good_dir):
    heads = DecodingHeads.from_pretrained(good_dir)
    rng = np.random.default_rng(1)
    t, p = heads.run(rng.standard_normal((5, HIDDEN)), rng.standard_normal((5, VOCAB)))
    assert t.shape == p.shape == (5,) and ((t > 0) & (t <= 2)).all() and ((p > 0) & (p <= 1)).all()
