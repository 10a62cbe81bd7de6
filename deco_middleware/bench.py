"""Per-token cost of learned decoding against plain sampling (``deco bench``), per backend.

Speed is measured as ratios inside one run: for each backend and batch size, plain sampling with a
static temperature 0.7 and top-p 0.9 and the learned pair generate the same number of tokens from
the same prompts, interleaved repeat by repeat, and medians are compared. Absolute numbers on a
shared machine are noisy; the ratio of interleaved medians much less so.

- ``torch``: Hugging Face ``generate()``; plain is its built-in temperature and top-p warpers,
  learned is :class:`~deco_middleware.hf.LearnedDecoding` (same model object, same prompts).
- ``optimum``: Optimum's ONNX Runtime model (:class:`~deco_middleware.ort.ORTModelForCausalLMWithHiddenStates`)
  driven by Hugging Face ``generate()``; plain is again its built-in warpers, learned is
  :class:`~deco_middleware.hf.LearnedDecoding` attached to the same ONNX Runtime model.
- ``ort``: the torch-free :class:`~deco_middleware.ort.OnnxGenerator` loop on the ONNX export;
  plain is the same loop with a static T=0.7 / P=0.9 through the same (sort-free) filter code, so
  this ratio is the heads' own cost on top of an already fast static filter, not a comparison with
  Hugging Face's warpers (there are none in a torch-free app).
- ``vllm``: one offline ``vllm.LLM`` with the plugin (:mod:`deco_middleware.vllm`); plain is vLLM's
  own sampler at T=0.7 / P=0.9, learned the same requests with ``extra_args={"deco": {}}``. Both
  seed every request and ignore EOS; a third path, vLLM at T=0.7 with no top-p (its cheapest
  sampling), is timed in the same rotation. The plugin's counters prove every learned row-step went
  through the heads. The wrapper's ``compute_logits`` runs on the plain path too (it does nothing
  without opted-in rows), so the ratio is the cost of the heads and the step, not of the wrapper.

``heads_step_us`` splits one step's extra cost into its parts, per backend and batch size, measured
on the real last-position hidden states and logits of the benchmark prompts.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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
PLAIN_TEMPERATURE, PLAIN_TOP_P = 0.7, 0.9
PLAIN_SAMPLING = {"do_sample": True, "temperature": PLAIN_TEMPERATURE, "top_p": PLAIN_TOP_P, "top_k": 0}
BACKENDS = ("torch", "optimum", "ort", "genai", "vllm")

Progress = Callable[[str], None]


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def bench_prompts(batch: int) -> list[str]:
    return [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(batch)]


def _median_us(function: Callable[[], Any], repeats: int) -> float:
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def _interleaved(
    plain: Callable[[int], Any], learned: Callable[[int], Any], repeats: int, label: str, progress: Progress | None,
    **others: Callable[[int], Any],
) -> dict[str, Any]:
    """Median wall and process-CPU seconds of ``plain`` and ``learned`` (and any ``others``), rotating
    which goes first.

    Each call gets the repeat index (for seeding). CPU time is reported next to wall time because on
    a machine shared with other jobs the wall time also counts the time this process waited for a core.
    """
    functions = {"plain": plain, "learned": learned, **others}
    for function in functions.values():  # warm-up every path once
        function(0)
    wall: dict[str, list[float]] = {name: [] for name in functions}
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            functions[name](repeat)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        if progress:
            progress(f"{label}: repeat {repeat + 1}/{repeats}")
    out: dict[str, Any] = {}
    for name in names:
        out[f"{name}_s"] = statistics.median(wall[name])
        out[f"{name}_cpu_s"] = statistics.median(cpu[name])
        out[f"{name}_all_s"] = wall[name]
    return out


def _run_row(backend: str, batch: int, new_tokens: int, repeats: int, timing: dict[str, Any]) -> dict[str, Any]:
    tokens = batch * new_tokens
    plain_s, learned_s = timing["plain_s"], timing["learned_s"]
    return {
        "backend": backend,
        "batch": batch,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "baseline_tokens_per_s": tokens / plain_s,
        "autodeco_tokens_per_s": tokens / learned_s,
        "baseline_step_ms": plain_s / new_tokens * 1e3,
        "autodeco_step_ms": learned_s / new_tokens * 1e3,
        "time_ratio": learned_s / plain_s,
        "cpu_time_ratio": timing["learned_cpu_s"] / timing["plain_cpu_s"] if timing["plain_cpu_s"] > 0 else math.nan,
        "baseline_wall_s": [round(v, 4) for v in timing["plain_all_s"]],
        "autodeco_wall_s": [round(v, 4) for v in timing["learned_all_s"]],
        "peak_rss_mb": peak_rss_mb(),
    }


def step_cost_us(
    heads: Any, batch: int, repeats: int = 50, seed: int = 0, *, hidden: Any = None, logits: Any = None
) -> dict[str, float]:
    """Median microseconds of each part of one learned-decoding step on the torch backend.

    ``hidden`` [batch, H] and ``logits`` [batch, V] torch tensors are the inputs (real ones from the
    model give representative nucleus sizes); without them, seeded random ones are used.
    ``baseline_warpers`` is what plain sampling pays instead: Hugging Face's temperature and top-p
    warpers (T=0.7, P=0.9), which sort every row.
    """
    torch = require("torch", purpose="Benchmarking")
    transformers = require("transformers", purpose="Benchmarking")
    from .heads.modules import probability_statistics
    from .sampling import DecodingSettings, nucleus_filter, nucleus_filter_reference, resolve_decoding, warp_temperature

    if hidden is None or logits is None:
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randn(batch, heads.hidden_size, generator=generator)
        logits = torch.randn(batch, heads.vocab_size, generator=generator) * 4
    hidden, logits = hidden.float().contiguous(), logits.float().contiguous()
    settings = DecodingSettings()
    h_np, l_np = hidden.numpy(), logits.numpy()
    finite = np.isfinite(h_np).all(axis=-1)
    t_pred, p_pred = heads.run(h_np, l_np)
    resolved = resolve_decoding(t_pred, p_pred, finite, settings)
    temperature, top_p = torch.from_numpy(resolved.temperature), torch.from_numpy(resolved.top_p)
    warped = warp_temperature(logits, temperature)
    warpers = transformers.LogitsProcessorList(
        [transformers.TemperatureLogitsWarper(PLAIN_TEMPERATURE), transformers.TopPLogitsWarper(PLAIN_TOP_P)]
    )
    captured: dict[int, Any] = {}

    def tap_callback() -> None:  # what the forward hook does per step
        captured[0] = (hidden[:, :].detach(), logits[:, :].detach())

    return {
        "tap": _median_us(tap_callback, repeats),
        "to_numpy": _median_us(lambda: (hidden.float().numpy(), logits.float().numpy()), repeats),
        "heads_onnx": _median_us(lambda: heads.run(h_np, l_np), repeats),
        "statistics_share_torch": _median_us(lambda: probability_statistics(logits, torch.from_numpy(t_pred)), repeats),
        "resolve": _median_us(lambda: resolve_decoding(t_pred, p_pred, finite, settings), repeats),
        "temperature": _median_us(lambda: warp_temperature(logits, temperature), repeats),
        "nucleus": _median_us(lambda: nucleus_filter(warped, top_p), repeats),
        "nucleus_full_sort": _median_us(lambda: nucleus_filter_reference(warped, top_p), max(3, repeats // 10)),
        "baseline_warpers": _median_us(lambda: warpers(None, logits), max(3, repeats // 10)),
    }


def step_cost_us_numpy(heads: Any, hidden: np.ndarray, logits: np.ndarray, repeats: int = 50) -> dict[str, float]:
    """Median microseconds of each part of one learned-decoding step on the numpy / ORT backend.

    ``baseline_filters`` is what the plain (static T=0.7, P=0.9) loop pays instead: its temperature
    division and nucleus filter.
    """
    from .sampling import DecodingSettings, nucleus_filter, nucleus_filter_reference, resolve_decoding, warp_temperature

    hidden, logits = np.ascontiguousarray(hidden, np.float32), np.ascontiguousarray(logits, np.float32)
    settings = DecodingSettings()
    finite = np.isfinite(hidden).all(axis=-1)
    t_pred, p_pred = heads.run(hidden, logits)
    resolved = resolve_decoding(t_pred, p_pred, finite, settings)
    warped = warp_temperature(logits, resolved.temperature)
    rows = logits.shape[0]
    plain_t, plain_p = np.full(rows, PLAIN_TEMPERATURE, np.float32), np.full(rows, PLAIN_TOP_P, np.float32)
    return {
        "heads_onnx": _median_us(lambda: heads.run(hidden, logits), repeats),
        "resolve": _median_us(lambda: resolve_decoding(t_pred, p_pred, finite, settings), repeats),
        "temperature": _median_us(lambda: warp_temperature(logits, resolved.temperature), repeats),
        "nucleus": _median_us(lambda: nucleus_filter(warped, resolved.top_p), repeats),
        "nucleus_full_sort": _median_us(lambda: nucleus_filter_reference(warped, resolved.top_p), max(3, repeats // 10)),
        "baseline_filters": _median_us(lambda: nucleus_filter(warp_temperature(logits, plain_t), plain_p), repeats),
    }


def _timed_processors(processors: Sequence[Any], spent: list[float]) -> Any:
    """Each of ``processors`` wrapped so that its calls append their wall time to ``spent``.

    (Each processor is wrapped rather than the list, because ``generate()`` copies the items of a
    custom list into a list of its own.)
    """
    transformers = require("transformers", purpose="Benchmarking")

    class Timed(transformers.LogitsProcessor):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            start = time.perf_counter()
            scores = self.inner(input_ids, scores)
            spent.append(time.perf_counter() - start)
            return scores

    return transformers.LogitsProcessorList([Timed(processor) for processor in processors])


def _per_step(spent: list[float], per_step: int) -> float:
    """Median over steps of the summed time of the ``per_step`` consecutive calls of each step."""
    steps = [sum(spent[i : i + per_step]) for i in range(0, len(spent) - per_step + 1, per_step)]
    return statistics.median(steps)


def in_loop_decoding_us(model: Any, inputs: dict[str, Any], heads: Any, fixed_length: dict[str, Any]) -> dict[str, float]:
    """Median microseconds per step that the decoding work takes *inside* ``generate()``.

    ``plain_warpers``: Hugging Face's ``TemperatureLogitsWarper(0.7)`` + ``TopPLogitsWarper(0.9)`` (the
    classes ``do_sample=True, temperature=0.7, top_p=0.9`` builds), passed as a logits processor so they
    can be timed; ``learned_pair``: the learned temperature processor (heads included) and top-p warper.
    Whole-run wall times on a small model vary by several percent from run to run; this isolates the
    part of the step that differs between the two paths.
    """
    transformers = require("transformers", purpose="Benchmarking")
    from .hf import LearnedDecoding
    from .hf.processors import NEUTRAL_GENERATE_KWARGS

    plain_spent: list[float] = []
    warpers = [transformers.TemperatureLogitsWarper(PLAIN_TEMPERATURE), transformers.TopPLogitsWarper(PLAIN_TOP_P)]
    model.generate(**inputs, **fixed_length, **NEUTRAL_GENERATE_KWARGS,
                   logits_processor=_timed_processors(warpers, plain_spent))
    learned_spent: list[float] = []
    with LearnedDecoding(heads).attach(model) as session:
        pair = list(session.logits_processor)
        session.logits_processor = _timed_processors(pair, learned_spent)
        session.generate(**inputs, **fixed_length)
    return {"plain_warpers": _per_step(plain_spent, len(warpers)) * 1e6, "learned_pair": _per_step(learned_spent, len(pair)) * 1e6}


def bench_torch(
    model: Any,
    tokenizer: Any,
    heads: Any,
    *,
    batch_sizes: Sequence[int],
    new_tokens: int,
    repeats: int,
    progress: Progress | None = None,
    backend: str = "torch",
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Runs and per-step costs of a model driven by Hugging Face ``generate`` (torch or Optimum)."""
    torch = require("torch", purpose="Benchmarking")
    from .hf import HiddenStateTap, LearnedDecoding
    from .hf.chat import chat_inputs

    decoding = LearnedDecoding(heads)
    runs, costs = [], {}
    fixed_length = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": tokenizer.pad_token_id}
    for batch in batch_sizes:
        inputs = chat_inputs(tokenizer, bench_prompts(batch))

        def plain(repeat: int) -> None:
            torch.manual_seed(repeat)
            model.generate(**inputs, **fixed_length, **PLAIN_SAMPLING)

        def learned(repeat: int) -> None:
            torch.manual_seed(repeat)
            decoding.generate(model, **inputs, **fixed_length)

        with torch.inference_mode():
            timing = _interleaved(plain, learned, repeats, f"{backend} batch {batch}", progress)
            with HiddenStateTap(model) as tap:  # the prompts' last positions: real LM distributions
                model(**inputs, **({"logits_to_keep": 1} if backend == "torch" else {}))
                hidden, logits = tap.pop()
            costs[str(batch)] = step_cost_us(heads, batch, hidden=hidden, logits=logits)
            in_loop = in_loop_decoding_us(model, inputs, heads, fixed_length)
        row = _run_row(backend, batch, new_tokens, repeats, timing)
        row["in_loop_us"] = in_loop
        runs.append(row)
    return runs, costs


def bench_ort(
    lm: Any,
    tokenizer: Any,
    heads: Any,
    *,
    batch_sizes: Sequence[int],
    new_tokens: int,
    repeats: int,
    progress: Progress | None = None,
    backend: str = "ort",
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Runs and per-step costs of the ONNX Runtime backend (the torch-free ``OnnxGenerator`` loop).

    ``lm`` is an :class:`~deco_middleware.ort.OnnxCausalLM` (or, with ``backend="genai"``, the
    onnxruntime-genai adapter :class:`~deco_middleware.genai.GenaiCausalLM`), ``tokenizer`` its
    :class:`~deco_middleware.ort.ChatTokenizer`. No EOS is given, so every row decodes exactly
    ``new_tokens`` tokens on both paths.
    """
    from .ort import OnnxGenerator
    from .sampling import StaticPredictor

    plain_generator = OnnxGenerator(lm, predictor=StaticPredictor(PLAIN_TEMPERATURE, PLAIN_TOP_P))
    learned_generator = OnnxGenerator(lm, heads)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    runs, costs = [], {}
    for batch in batch_sizes:
        prompts = [tokenizer.encode_chat(prompt) for prompt in bench_prompts(batch)]

        def plain(repeat: int) -> None:
            plain_generator.generate(prompts, max_new_tokens=new_tokens, seed=repeat, pad_token_id=pad)

        def learned(repeat: int) -> None:
            learned_generator.generate(prompts, max_new_tokens=new_tokens, seed=repeat, pad_token_id=pad)

        timing = _interleaved(plain, learned, repeats, f"{backend} batch {batch}", progress)
        from .ort import left_pad

        outputs, _ = lm.prefill(*left_pad(prompts, pad))
        costs[str(batch)] = step_cost_us_numpy(heads, outputs.hidden_states[:, -1, :], outputs.logits[:, -1, :])
        runs.append(_run_row(backend, batch, new_tokens, repeats, timing))
    return runs, costs


def vllm_decoded_rows(llm: Any) -> tuple[int, int]:
    """The plugin's counters in the engine's worker: opted-in row-steps decoded by the learned step, and
    those left to vLLM's sampler (each logged as an error)."""

    def counters(_model: Any) -> tuple[int, int]:
        from .vllm.runtime import STEP

        return STEP.decoded_rows, STEP.missed_rows

    decoded, missed = llm.apply_model(counters)[0]
    return int(decoded), int(missed)


def bench_vllm(
    llm: Any,
    *,
    batch_sizes: Sequence[int],
    new_tokens: int,
    repeats: int,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Runs of one offline vLLM engine with the plugin: vLLM's own sampler (T=0.7, P=0.9) against the
    same requests with ``extra_args={"deco": {}}`` (the heads, the one decoding step, a one-token
    distribution handed back to vLLM's sampler).

    Both paths give every request its own seed and ``ignore_eos=True``, so every row decodes exactly
    ``new_tokens`` tokens. Each learned run is checked against the plugin's counters: every one of its
    row-steps must have gone through the heads, or the ratio would time something else.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from .errors import PluginInactiveError
    from .hf.chat import chat_prompt_ids
    from .vllm.settings import EXTRA_ARGS_KEY

    tokenizer = llm.get_tokenizer()
    runs = []
    for batch in batch_sizes:
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in chat_prompt_ids(tokenizer, bench_prompts(batch))]
        def run(**sampling: Any) -> Callable[[int], None]:
            """One generate() of the batch, every request seeded from the repeat, exactly ``new_tokens`` long."""
            def generate(repeat: int) -> None:
                params = [SamplingParams(seed=repeat * 1000 + i, max_tokens=new_tokens, ignore_eos=True, **sampling)
                          for i in range(batch)]
                llm.generate(prompts, params, use_tqdm=False)
            return generate

        before, missed_before = vllm_decoded_rows(llm)
        timing = _interleaved(
            run(temperature=PLAIN_TEMPERATURE, top_p=PLAIN_TOP_P), run(extra_args={EXTRA_ARGS_KEY: {}}), repeats,
            f"vllm batch {batch}", progress,
            temperature_only=run(temperature=PLAIN_TEMPERATURE, top_p=1.0),  # vLLM's cheapest path: no top-p sort
        )
        after, missed_after = vllm_decoded_rows(llm)
        expected = (repeats + 1) * batch * new_tokens  # the warm-up run included
        if after - before != expected or missed_after != missed_before:
            raise PluginInactiveError(
                f"The vLLM plugin decoded {after - before} of the {expected} learned row-steps at batch {batch} "
                f"({missed_after - missed_before} left to vLLM's sampler); the engine log says why (e.g. no heads fit "
                "the model). Use --heads default or heads made for this model."
            )
        row = _run_row("vllm", batch, new_tokens, repeats, timing)
        row["learned_row_steps"] = after - before
        row["temperature_only_tokens_per_s"] = batch * new_tokens / timing["temperature_only_s"]
        row["time_ratio_vs_temperature_only"] = timing["learned_s"] / timing["temperature_only_s"]
        row["temperature_only_wall_s"] = [round(v, 4) for v in timing["temperature_only_all_s"]]
        runs.append(row)
    return runs, {}


def run_bench(
    model: Any,
    tokenizer: Any,
    heads: Any,
    *,
    batch_sizes: Sequence[int] = (1, 16),
    new_tokens: int = 64,
    repeats: int = 3,
    progress: Progress | None = None,
    ort_lm: Any = None,
    ort_tokenizer: Any = None,
    optimum_model: Any = None,
    optimum_tokenizer: Any = None,
    skipped: dict[str, str] | None = None,
    genai_lm: Any = None,
    genai_tokenizer: Any = None,
    vllm_llm: Any = None,
) -> dict[str, Any]:
    """Interleaved plain-vs-learned timings and per-step costs for every backend given.

    ``model`` / ``tokenizer``: a transformers causal LM and its tokenizer for the torch backend
    (``None`` skips it). ``ort_lm`` / ``ort_tokenizer``: an ``OnnxCausalLM`` and its
    ``ChatTokenizer`` for the ORT backend (``None`` skips it). ``optimum_model`` /
    ``optimum_tokenizer``: an ``ORTModelForCausalLMWithHiddenStates`` and its tokenizer for the
    Optimum backend (``None`` skips it). ``genai_lm`` / ``genai_tokenizer``: a ``GenaiCausalLM`` and its
    ``ChatTokenizer`` for the onnxruntime-genai backend (``None`` skips it). ``vllm_llm``: an offline
    ``vllm.LLM`` started with the plugin (:func:`deco_middleware.vllm.generate.offline_engine`; ``None``
    skips it). ``skipped`` records why a backend was left out.
    """
    if model is None and ort_lm is None and optimum_model is None and genai_lm is None and vllm_llm is None:
        raise ValueError("Nothing to benchmark: pass a torch `model`, an `optimum_model`, an `ort_lm`, a `genai_lm`, "
                         "a `vllm_llm`, or several.")
    common = {"batch_sizes": batch_sizes, "new_tokens": new_tokens, "repeats": repeats, "progress": progress}
    runs: list[dict[str, Any]] = []
    costs: dict[str, dict[str, dict[str, float]]] = {}
    config: dict[str, Any] = {
        # The machine's 1/5/15-minute load averages around the run: ratios from a busy machine are noisier.
        "load_average_start": list(os.getloadavg()),
        "baseline": {"temperature": PLAIN_TEMPERATURE, "top_p": PLAIN_TOP_P},
        "batch_sizes": list(batch_sizes),
        "new_tokens": new_tokens,
        "repeats": repeats,
    }
    if model is not None:
        torch = require("torch", purpose="Benchmarking")
        backend_runs, costs["torch"] = bench_torch(model, tokenizer, heads, **common)
        runs += backend_runs
        config.update(model_dtype=str(getattr(model, "dtype", "")), torch_threads=torch.get_num_threads())
    if optimum_model is not None:
        backend_runs, costs["optimum"] = bench_torch(optimum_model, optimum_tokenizer, heads, backend="optimum", **common)
        runs += backend_runs
        config["optimum_model"] = str(getattr(optimum_model, "model_path", getattr(optimum_model, "path", "")))
    if ort_lm is not None:
        backend_runs, costs["ort"] = bench_ort(ort_lm, ort_tokenizer, heads, **common)
        runs += backend_runs
        config["ort_model"] = str(getattr(ort_lm, "directory", ""))
    if genai_lm is not None:
        backend_runs, costs["genai"] = bench_ort(genai_lm, genai_tokenizer, heads, backend="genai", **common)
        runs += backend_runs
        config["genai_model"] = str(getattr(genai_lm, "directory", ""))
    if vllm_llm is not None:
        import vllm

        backend_runs, _ = bench_vllm(vllm_llm, **common)
        runs += backend_runs
        scheduler = getattr(getattr(getattr(vllm_llm, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
        config["vllm"] = {"version": vllm.__version__, "engine": "offline LLM.generate, in-process",
                          "max_num_seqs": getattr(scheduler, "max_num_seqs", None)}
    config["load_average_end"] = list(os.getloadavg())
    return {"runs": runs, "heads_step_us": costs, "skipped": dict(skipped or {}), "config": config}


def _us(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "| backend | batch | plain tok/s | learned tok/s | plain ms/step | learned ms/step | time ratio | CPU-time ratio | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['backend']} | {run['batch']} | {run['baseline_tokens_per_s']:.1f} | {run['autodeco_tokens_per_s']:.1f} "
            f"| {run['baseline_step_ms']:.1f} | {run['autodeco_step_ms']:.1f} | {run['time_ratio']:.3f} "
            f"| {run['cpu_time_ratio']:.3f} | {run['peak_rss_mb']:.0f} |"
        )
    in_loop = [run for run in result["runs"] if "in_loop_us" in run]
    if in_loop:
        lines += ["", "Decoding work per step measured inside `generate()` (median microseconds per step):", "",
                  "| backend | batch | plain warpers | learned pair | learned - plain |", "|---|---|---|---|---|"]
        for run in in_loop:
            plain_us, learned_us = run["in_loop_us"]["plain_warpers"], run["in_loop_us"]["learned_pair"]
            lines.append(f"| {run['backend']} | {run['batch']} | {_us(plain_us)} | {_us(learned_us)} | {_us(learned_us - plain_us)} |")
    for backend, by_batch in result["heads_step_us"].items():
        parts = list(next(iter(by_batch.values())))
        lines += ["", f"Per-step cost of the learned pair's parts, {backend} backend (median microseconds):", "",
                  "| batch | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
        for batch, step in by_batch.items():
            lines.append(f"| {batch} | " + " | ".join(_us(step.get(p, math.nan)) for p in parts) + " |")
    by_key = {(run["backend"], run["batch"]): run for run in result["runs"]}
    pairs = [(by_key[("genai", b)], by_key[("ort", b)]) for (name, b) in by_key if name == "genai" and ("ort", b) in by_key]
    if pairs:
        lines += ["", "onnxruntime-genai loop vs our ORT loop (tokens/s ratio, same model weights, same decoding):", "",
                  "| batch | plain genai/ort | learned genai/ort |", "|---|---|---|"]
        for genai, ort in pairs:
            lines.append(f"| {genai['batch']} | {genai['baseline_tokens_per_s'] / ort['baseline_tokens_per_s']:.2f} "
                         f"| {genai['autodeco_tokens_per_s'] / ort['autodeco_tokens_per_s']:.2f} |")
    vllm_runs = [run for run in result["runs"] if "time_ratio_vs_temperature_only" in run]
    if vllm_runs:
        lines += ["", "vLLM: the learned pair against vLLM's own sampler at T=0.7 with no top-p (its cheapest "
                  "sampling path; the table above compares with T=0.7, P=0.9):", "",
                  "| batch | T-only tok/s | learned tok/s | time ratio vs T-only |", "|---|---|---|---|"]
        for run in vllm_runs:
            lines.append(f"| {run['batch']} | {run['temperature_only_tokens_per_s']:.1f} | "
                         f"{run['autodeco_tokens_per_s']:.1f} | {run['time_ratio_vs_temperature_only']:.3f} |")
    config = result.get("config", {})
    if "load_average_start" in config:
        loads = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(config["load_average_start"], config["load_average_end"]))
        lines += ["", f"Load average (1/5/15 min) at start/end: {loads}."]
    for backend, reason in result.get("skipped", {}).items():
        lines += ["", f"Skipped backend `{backend}`: {reason}"]
    return "\n".join(lines) + "\n"
