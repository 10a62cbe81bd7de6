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


_TRUE_WORDS = ("true", "yes", "on")
_FALSE_WORDS = ("false", "no", "off", "none", "null")
# DecodingSettings field -> "bool" | "int" | "float" (annotations are strings under `from __future__`).
_SETTING_KINDS = {
    field.name: next(kind for kind in ("bool", "int", "float") if kind in str(field.type))
    for field in dataclasses.fields(DecodingSettings)
}


def _switch(value: Any) -> bool | None:
    """``True`` / ``False`` for an on/off value of ``extra_args["deco"]`` (bools, 0 / 1, and their
    REST spellings ``"true"``, ``"1"``, ...); ``None`` when ``value`` is not such a switch."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("", "1", "1.0", *_TRUE_WORDS):
            return True
        if word in ("0", "0.0", *_FALSE_WORDS):
            return False
    return None


def _setting_from_text(key: str, text: str) -> Any:
    """A setting that arrived as a string (REST clients often send ``"0.8"``) as the type it has."""
    word = text.strip()
    kind = _SETTING_KINDS[key]
    if word.lower() in ("none", "null") and kind != "bool":
        return None
    if kind == "bool":
        switch = _switch(word)
        if switch is None:
            raise DecoRequestError(
                f'`extra_args["{EXTRA_ARGS_KEY}"]["{key}"]` has to be true or false, got {text!r}.'
            )
        return switch
    try:
        number = float(word)
    except ValueError:
        raise DecoRequestError(
            f'`extra_args["{EXTRA_ARGS_KEY}"]["{key}"]` has to be a number, got {text!r}.'
        ) from None
    if kind == "int":
        if not number.is_integer():
            raise DecoRequestError(
                f'`extra_args["{EXTRA_ARGS_KEY}"]["{key}"]` has to be a whole number, got {text!r}.'
            )
        return int(number)
    return number


def request_decoding(extra_args: Mapping[str, Any] | None) -> RequestDecoding | None:
    """``None`` for a request without the opt-in; else its validated settings.

    ``extra_args={"deco": {}}`` or ``{"deco": True}`` use the heads as they are;
    ``{"deco": {"temperature_scale": 0}}`` is greedy on the learned pair, as in the HF path. Over
    REST, ``vllm_xargs`` holds no nested objects and clients often send every value as a string:
    ``"deco": "true"`` / ``"false"`` / ``"1"`` / ``"0"`` switch the heads on or off, and the
    settings come as a JSON object string, ``"deco": "{\"temperature_scale\": 0.8}"``, whose
    values may themselves be strings (``"0.8"``, ``"true"``).
    """
    if not extra_args or EXTRA_ARGS_KEY not in extra_args:
        return None
    value = extra_args[EXTRA_ARGS_KEY]
    switch = _switch(value)
    if switch is not None:
        return RequestDecoding(settings=DecodingSettings()) if switch else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DecoRequestError(
                f'`vllm_xargs["{EXTRA_ARGS_KEY}"]` has to be true, false or a JSON object of decoding settings, '
                f'got {value!r} ({error}). Example: "{EXTRA_ARGS_KEY}": "{{\\"temperature_scale\\": 0.8}}".'
            ) from None
        switch = _switch(value)
        if switch is not None:  # e.g. the JSON text "true" inside a string
            return RequestDecoding(settings=DecodingSettings()) if switch else None
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
    values = {
        key: _setting_from_text(key, item) if isinstance(item, str) else item
        for key, item in value.items()
        if key != TRACE_KEY
    }
    try:
        settings = DecodingSettings(**values)
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
