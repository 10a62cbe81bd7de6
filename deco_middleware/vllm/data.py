"""``deco train data --engine vllm``: rejection sampling with vLLM's own sampler.

This is how training data for a large model is made on a GPU box: vLLM batches and schedules the
samples, :func:`deco_middleware.training.rejection_sample` grades them and writes the same records
as with the torch engine (same prompts, same per-sample seeds, same grader, same format). No heads
are involved: vLLM's built-in temperature / top-p sampler draws every sample, so any model vLLM
serves can be sampled, wrapped architecture or not (the plugin's heads are switched off for it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..training.data import SampledText


class VllmSampler:
    """A :class:`~deco_middleware.training.data.CompletionSampler` on an offline ``vllm.LLM``.

    Every sample is one request with its own ``SamplingParams.seed`` (``seeds[i][k]``), so a sample
    does not depend on the batch it ran in. Prompts go through the tokenizer's chat template as in the
    torch engine; generation stops at the model's EOS ids (the generation config's and the
    tokenizer's, the engine's rule); the text leaves special tokens out.
    """

    def __init__(self, llm: Any) -> None:
        import vllm

        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.description = (f"vLLM {vllm.__version__} offline LLM.generate, its own temperature/top-p sampler "
                            "(one request per sample, seeded)")
        self._stop = sorted(self._stop_token_ids())

    def _stop_token_ids(self) -> frozenset[int]:
        from ..rows import stop_token_ids

        generation_config = None
        try:
            from transformers import GenerationConfig

            folder = self.llm.llm_engine.model_config.model
            generation_config = GenerationConfig.from_pretrained(folder)
        except (OSError, ValueError, AttributeError):  # no generation_config.json: the tokenizer's EOS only
            pass
        return stop_token_ids(generation_config, self.tokenizer)

    def sample(self, prompts: Sequence[str], *, temperature: float, top_p: float, seeds: list[list[int]],
               max_new_tokens: int, stats: Any) -> Iterator[tuple[int, list[SampledText]]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from ..hf.chat import chat_prompt_ids

        ids = chat_prompt_ids(self.tokenizer, list(prompts))
        requests, params, owners = [], [], []
        for i, prompt in enumerate(ids):
            stats.prompt_tokens += len(prompt)
            for seed in seeds[i]:
                requests.append(TokensPrompt(prompt_token_ids=prompt))
                params.append(SamplingParams(temperature=temperature, top_p=top_p, seed=int(seed),
                                             max_tokens=max_new_tokens, stop_token_ids=self._stop,
                                             skip_special_tokens=True))
                owners.append(i)
        outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []
        by_prompt: dict[int, list[SampledText]] = {i: [] for i in range(len(ids))}
        for owner, output in zip(owners, outputs):
            completion = output.outputs[0]
            token_ids = list(completion.token_ids)
            stats.generated_tokens += len(token_ids)
            finished = completion.finish_reason == "stop"
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            by_prompt[owner].append(SampledText(text, finished))
        yield from by_prompt.items()


def data_engine(model: str, *, batch_size: int, **engine_kwargs: Any) -> Any:
    """An offline vLLM engine for rejection sampling: the plugin's heads off, ``batch_size`` sequences at once."""
    from .generate import offline_engine

    return offline_engine(model, heads="off", max_num_seqs=batch_size, **engine_kwargs)


__all__ = ["VllmSampler", "data_engine"]
