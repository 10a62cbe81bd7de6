"""The per-request switch: ``SamplingParams(extra_args={"deco": {...}})`` read into DecodingSettings.

No vLLM import here, so the parsing and its error messages are tested without an engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidDecodingRequestError
from ..sampling import DecodingSettings

EXTRA_ARGS_KEY = "deco"
# Keys of the "deco" object besides the DecodingSettings fields.
TRACE_KEY = "trace_id"
SETTING_KEYS = tuple(field.name for field in dataclasses.fields(DecodingSettings))
# vLLM's own warpers and their neutral values: for a learned row the plugin hands vLLM a one-token
# distribution, so these never act on it; a non-neutral value is reported, not applied.
NEUTRAL_VLLM_SAMPLING: dict[str, tuple[Any, ...]] = {
    "temperature": (1.0,),
    "top_p": (1.0,),
    "top_k": (0, -1, None),
    "min_p": (0.0,),
}
# vLLM applies these after every logits processor, i.e. after our temperature and nucleus; on a
# one-token distribution they would silently do nothing. Refused until the plugin applies them first.
PENALTIES_NEUTRAL: dict[str, float] = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}


# A ValueError: vLLM turns it into a VLLMValidationError, i.e. HTTP 400, without touching the engine.
DecoRequestError = InvalidDecodingRequestError


@dataclass(frozen=True)
class RequestDecoding:
    """What one request asked for: the settings and an optional trace id."""

    settings: DecodingSettings
    trace_id: str | None = None


def request_decoding(extra_args: Mapping[str, Any] | None) -> RequestDecoding | None:
    """``None`` for a request without the opt-in; else its validated settings.

    ``extra_args={"deco": {}}`` or ``{"deco": True}`` use the heads as they are;
    ``{"deco": {"temperature_scale": 0}}`` is greedy on the learned pair, as in the HF path. Over
    REST, ``vllm_xargs`` holds no nested objects: send ``"deco": "{\"temperature_scale\": 0}"``
    (a JSON object as a string) or ``"deco": true``.
    """
    if not extra_args or EXTRA_ARGS_KEY not in extra_args:
        return None
    value = extra_args[EXTRA_ARGS_KEY]
    if value is None or value is False or (type(value) is int and value == 0):
        return None
    if value is True or (type(value) is int and value == 1):
        value = {}  # REST's vllm_xargs turns a JSON `true` into 1
    if isinstance(value, str):
        # REST's vllm_xargs only carries strings, numbers and lists: the settings come as a JSON object string.
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as error:
            raise DecoRequestError(
                f'`vllm_xargs["{EXTRA_ARGS_KEY}"]` has to be a JSON object of decoding settings, got {value!r} ({error}). '
                f'Example: "{EXTRA_ARGS_KEY}": "{{\\"temperature_scale\\": 0.8}}".'
            ) from None
    if not isinstance(value, Mapping):
        raise DecoRequestError(
            f'`extra_args["{EXTRA_ARGS_KEY}"]` has to be an object of decoding settings (or true), got {value!r}. '
            f'Example: {{"{EXTRA_ARGS_KEY}": {{"temperature_scale": 1.0}}}}.'
        )
    unknown = sorted(set(value) - set(SETTING_KEYS) - {TRACE_KEY})
    if unknown:
        raise DecoRequestError(
            f'Unknown key(s) {unknown} in `extra_args["{EXTRA_ARGS_KEY}"]`; valid keys: '
            f"{', '.join([*SETTING_KEYS, TRACE_KEY])}."
        )
    trace_id = value.get(TRACE_KEY)
    if trace_id is not None and not isinstance(trace_id, str):
        raise DecoRequestError(f'`extra_args["{EXTRA_ARGS_KEY}"]["{TRACE_KEY}"]` has to be a string, got {trace_id!r}.')
    try:
        settings = DecodingSettings(**{k: v for k, v in value.items() if k != TRACE_KEY})
    except (TypeError, ValueError) as error:
        raise DecoRequestError(f'Invalid `extra_args["{EXTRA_ARGS_KEY}"]`: {error}') from error
    return RequestDecoding(settings=settings, trace_id=trace_id)


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    if value in neutral:
        return True
    return isinstance(value, float) and any(isinstance(n, float) and math.isclose(value, n) for n in neutral)


def ignored_vllm_sampling(params: Any) -> dict[str, Any]:
    """vLLM sampling settings of ``params`` that are not neutral (the plugin does not apply them)."""
    return {
        key: getattr(params, key)
        for key, neutral in NEUTRAL_VLLM_SAMPLING.items()
        if hasattr(params, key) and not _is_neutral(getattr(params, key), neutral)
    }


def check_penalties(params: Any) -> None:
    """Refuse penalties on a learned row: vLLM would apply them after the plugin's step (see above)."""
    set_penalties = {
        key: getattr(params, key)
        for key, neutral in PENALTIES_NEUTRAL.items()
        if getattr(params, key, neutral) not in (neutral, None)
    }
    if set_penalties:
        listed = ", ".join(f"{k}={v}" for k, v in set_penalties.items())
        raise DecoRequestError(
            f"{listed} cannot be combined with `extra_args[\"{EXTRA_ARGS_KEY}\"]` yet: vLLM applies penalties after "
            "logits processors, which would put them after the learned temperature and nucleus instead of before. "
            "Drop the penalties for learned requests."
        )


__all__ = [
    "EXTRA_ARGS_KEY",
    "SETTING_KEYS",
    "TRACE_KEY",
    "DecoRequestError",
    "RequestDecoding",
    "check_penalties",
    "ignored_vllm_sampling",
    "request_decoding",
]
