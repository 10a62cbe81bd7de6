"""float32 vs bfloat16 on this CPU: one forward pass of the default model over a batch of 8 x 64 tokens.

The two dtypes are timed interleaved in one process (fp32, bf16, fp32, ...), so a noisy shared
machine slows both alike; the reported number is the ratio of the medians.

    PYTHONPATH=. python benchmarks/dtype_forward.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from deco_middleware.default_model import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    models = {name: load_model("default", dtype=getattr(torch, name))[0] for name in ("float32", "bfloat16")}
    generator = torch.Generator().manual_seed(0)
    vocab = models["float32"].config.vocab_size
    input_ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=generator)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():  # warm-up, not timed
            model(input_ids=input_ids, use_cache=False)
        for _ in range(args.repeats):
            for name, model in models.items():
                started = time.perf_counter()
                model(input_ids=input_ids, use_cache=False)
                seconds[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    print(json.dumps({
        "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "cpu_has_avx512_bf16": "avx512_bf16" in flags, "cpu_has_amx_bf16": "amx_bf16" in flags,
        "seconds": {k: [round(v, 4) for v in vs] for k, vs in seconds.items()},
        "median_seconds": {k: round(v, 4) for k, v in medians.items()},
        "bfloat16_over_float32": round(medians["bfloat16"] / medians["float32"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
