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


@pytest.mark.parametrize("value", [True, 1, {}, "", "{}"])
def test_opt_in_with_defaults(value: object) -> None:
    decoding = request_decoding({"deco": value})
    assert decoding is not None and decoding.settings == DecodingSettings() and decoding.trace_id is None


def test_settings_from_a_mapping_and_from_rest_json() -> None:
    wanted = {"temperature_scale": 0.0, "top_k": 40, "min_p": 0.05, "trace_id": "q1"}
    for value in (wanted, json.dumps(wanted)):
        decoding = request_decoding({"deco": value})
        assert decoding.settings == DecodingSettings(temperature_scale=0.0, top_k=40, min_p=0.05)
        assert decoding.settings.greedy and decoding.trace_id == "q1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"temperature_scale": -1}, "`temperature_scale` has to be >= 0.0, got -1"),
        ({"temprature_scale": 1}, "Unknown key(s) ['temprature_scale']"),
        ("{not json", "has to be a JSON object of decoding settings"),
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
