"""Per-token cost of learned decoding against plain Hugging Face sampling (``deco bench``).

Speed is measured as ratios inside one run: for each batch size, plain sampling (built-in
temperature 0.7 and top-p 0.9 warpers) and the learned pair generate the same number of tokens from
the same prompts, interleaved repeat by repeat, and medians are compared. Absolute numbers on a
shared machine are noisy; the ratio of interleaved medians much less so.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


from ._deps import require

BENCH_PROMPTS = (
    "What is 17 * 23?",
    "Write a haiku about the sea.",
    "List three prime numbers larger than 50.",
    "Explain in one sentence what a hash table is.",
    "What is the capital of Australia?",
    "Spell the word 'banana' backwards.",
    "How many legs do three spiders have?",
    "Sort these words: pear, apple, fig.",
)
PLAIN_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _median_us(function: Callable[[], Any], repeats: int) -> float:
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def step_cost_us(heads: Any, batch: int, repeats: int = 50, seed: int = 0) -> dict[str, float]:
    """Median microseconds of each part of one learned-decoding step, on synthetic inputs."""
    torch = require("torch", purpose="Benchmarking")
    from .heads.modules import probability_statistics
    from .sampling import DecodingSettings, nucleus_filter, nucleus_filter_reference, resolve_decoding, warp_temperature

    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, heads.hidden_size, generator=generator)
    logits = torch.randn(batch, heads.vocab_size, generator=generator) * 4
    scores = logits.float()
    finite = torch.ones(batch, dtype=torch.bool)
    settings = DecodingSettings()
    h_np, l_np = hidden.float().numpy(), logits.float().numpy()
    t_pred, p_pred = (torch.from_numpy(a) for a in heads.run(h_np, l_np))
    resolved = resolve_decoding(t_pred, p_pred, finite, settings)
    warped = warp_temperature(scores, resolved.temperature)
    captured: dict[int, Any] = {}

    def tap_callback() -> None:  # what the forward hook does per step
        captured[0] = (hidden[:, :].detach(), logits[:, :].detach())

    return {
        "tap": _median_us(tap_callback, repeats),
        "to_numpy": _median_us(lambda: (hidden.float().numpy(), logits.float().numpy()), repeats),
        "heads_onnx": _median_us(lambda: heads.run(h_np, l_np), repeats),
        "statistics_share_torch": _median_us(lambda: probability_statistics(scores, t_pred), repeats),
        "resolve": _median_us(lambda: resolve_decoding(t_pred, p_pred, finite, settings), repeats),
        "temperature": _median_us(lambda: warp_temperature(scores, resolved.temperature), repeats),
        "nucleus": _median_us(lambda: nucleus_filter(warped, resolved.top_p), repeats),
        "nucleus_full_sort": _median_us(lambda: nucleus_filter_reference(warped, resolved.top_p), repeats),
    }


def run_bench(
    model: Any,
    tokenizer: Any,
    heads: Any,
    *,
    batch_sizes: Sequence[int] = (1, 16),
    new_tokens: int = 64,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Interleaved plain-vs-learned generation timings and the per-step cost breakdown."""
    torch = require("torch", purpose="Benchmarking")
    from .generation import chat_inputs
    from .hf import LearnedDecoding

    decoding = LearnedDecoding(heads)
    runs = []
    fixed_length = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": tokenizer.pad_token_id}
    for batch in batch_sizes:
        prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(batch)]
        inputs = chat_inputs(tokenizer, prompts)
        timings: dict[str, list[float]] = {"plain": [], "learned": []}

        def plain() -> None:
            model.generate(**inputs, **fixed_length, **PLAIN_SAMPLING)

        def learned() -> None:
            decoding.generate(model, **inputs, **fixed_length)

        with torch.inference_mode():
            plain()  # warm-up both paths once
            learned()
            for repeat in range(repeats):
                order = (("plain", plain), ("learned", learned)) if repeat % 2 == 0 else (("learned", learned), ("plain", plain))
                for name, function in order:
                    torch.manual_seed(repeat)
                    start = time.perf_counter()
                    function()
                    timings[name].append(time.perf_counter() - start)
                if progress:
                    progress(f"batch {batch}: repeat {repeat + 1}/{repeats}")
        plain_s, learned_s = statistics.median(timings["plain"]), statistics.median(timings["learned"])
        tokens = batch * new_tokens
        runs.append(
            {
                "backend": "torch",
                "batch": batch,
                "new_tokens": new_tokens,
                "repeats": repeats,
                "baseline_tokens_per_s": tokens / plain_s,
                "autodeco_tokens_per_s": tokens / learned_s,
                "baseline_step_ms": plain_s / new_tokens * 1e3,
                "autodeco_step_ms": learned_s / new_tokens * 1e3,
                "time_ratio": learned_s / plain_s,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    return {
        "runs": runs,
        "heads_step_us": {str(batch): step_cost_us(heads, batch) for batch in batch_sizes},
        "config": {
            "baseline": PLAIN_SAMPLING,
            "batch_sizes": list(batch_sizes),
            "new_tokens": new_tokens,
            "repeats": repeats,
            "model_dtype": str(getattr(model, "dtype", "")),
            "torch_threads": torch.get_num_threads(),
        },
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "| backend | batch | plain tok/s | learned tok/s | plain ms/step | learned ms/step | time ratio | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['backend']} | {run['batch']} | {run['baseline_tokens_per_s']:.1f} | {run['autodeco_tokens_per_s']:.1f} "
            f"| {run['baseline_step_ms']:.1f} | {run['autodeco_step_ms']:.1f} | {run['time_ratio']:.3f} | {run['peak_rss_mb']:.0f} |"
        )
    parts = sorted({part for costs in result["heads_step_us"].values() for part in costs})
    lines += ["", "Per-step cost of the learned pair's parts (median microseconds):", "",
              "| batch | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
    for batch, costs in result["heads_step_us"].items():
        lines.append(f"| {batch} | " + " | ".join(f"{costs[p]:.0f}" for p in parts) + " |")
    return "\n".join(lines) + "\n"


