"""Runs one offline vLLM engine for tests/test_vllm.py in its own process and writes JSON.

Usage: python tests/vllm_offline_script.py CONFIG.json OUTPUT.json

CONFIG: {"requests": [{"prompt_token_ids": [...], "params": {...SamplingParams kwargs...}}],
"check_heads": optional heads folder to check against the loaded model (expects a refusal)}.
The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, "uni" executor): one vLLM
import instead of three, and ``apply_model`` runs here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

def engine(**overrides):
    from vllm import LLM

    from deco_middleware.default_model import ensure_default_model

    kwargs = dict(
        model=str(ensure_default_model()), enforce_eager=True, gpu_memory_utilization=0.3, dtype="float32", max_model_len=512,
        max_num_seqs=16, distributed_executor_backend="uni", seed=0,
    )
    kwargs.update(overrides)
    return LLM(**kwargs)


def main(config_path: str, output_path: str) -> None:
    with open(config_path) as handle:
        config = json.load(handle)
    result: dict = {}
    try:
        llm = engine()
    except Exception as error:  # the refusal of mismatched heads happens here; report it
        result["engine_error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        with open(output_path, "w") as handle:
            json.dump(result, handle)
        return
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in config["requests"]]
    params = [SamplingParams(**r["params"]) for r in config["requests"]]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result["tokens"] = [list(o.outputs[0].token_ids) for o in outputs]
    if config.get("check_heads"):
        heads_dir = config["check_heads"]

        def check(model):
            from deco_middleware.vllm.models import load_heads_for, vllm_model_identity

            identity = vllm_model_identity(model, "vllm-loaded", "LlamaForCausalLM")
            fits = load_heads_for(identity, choice="smollm2-135m-instruct").directory.name
            try:
                load_heads_for(identity, choice=heads_dir)
            except Exception as error:
                return {"shipped": fits, "refused": f"{type(error).__name__}: {error}"}
            return {"shipped": fits, "refused": None}

        result["check_heads"] = llm.apply_model(check)[0]
    with open(output_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    main(sys.argv[1], sys.argv[2])
