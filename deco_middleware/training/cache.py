"""Run the frozen LM once over the training data and cache what the heads need, memory-mapped.

Per completion token the cache holds the final-norm hidden state ``h`` (the LM head's input) and
the label ``y`` (the next token). With the LM-head weight stored alongside, training recomputes
the raw logits exactly as ``h @ W^T (+ b)``, so epochs never re-run the LM.

Layout of a cache folder (written under a temporary name and renamed into place, so an
interrupted run never leaves a half-written cache that looks complete):

- ``hidden.npy``   [tokens, H]  float32 (default; exact for float32 models) or float16 (exact for
  bf16 models; for a float32 model the recomputed logits are within 1e-2 of the largest logit)
- ``labels.npy``   [tokens]     int64 next-token ids
- ``sequence.npy`` [tokens]     int32 index of the record each token came from (for the split)
- ``lm_head.npy``  [V, H]       float32 LM-head weight (``lm_head_bias.npy`` [V] when it has one)
- ``meta.json``    identity of the base model, sizes, the data summary, timings
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..jsonl import read_json_object
from ..manifest import BaseModelIdentity
from ..errors import CacheError
from ..progress import ProgressBar, ProgressCallback

META_NAME = "meta.json"
CACHE_FORMAT = 1
HIDDEN_DTYPES = ("float16", "float32")
# ``temperatures`` / ``top_ps`` / ``behaviour``: the per-token behaviour of on-policy rollouts (training/rollouts.py).
RECORD_INFO_KEYS = ("task", "group", "reward", "temperature", "top_p", "count", "steer", "pair", "behaviour",
                    "temperatures", "top_ps")



def tokenize_record(tokenizer: Any, record: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(prompt ids with the chat template applied, completion ids ending with the end-of-turn token)."""
    from ..hf.chat import chat_prompt_ids

    prompt_ids = chat_prompt_ids(tokenizer, [record["prompt"]])[0]  # a user message or a list of chat messages
    if record.get("completion_ids"):
        # Rollouts store the sampled ids (end-of-turn included when drawn): re-tokenizing the text
        # can split it differently, and the behaviour log-probabilities must be of the drawn tokens.
        return list(prompt_ids), [int(i) for i in record["completion_ids"]]
    completion_ids = list(tokenizer(record["completion"], add_special_tokens=False)["input_ids"])
    # The model learns where to stop too: the end-of-turn token is a label, unless the sample was
    # cut off by the generation budget (then the model never chose to stop there).
    if not record.get("truncated", False) and tokenizer.eos_token_id is not None:
        completion_ids.append(int(tokenizer.eos_token_id))
    return list(prompt_ids), completion_ids


@dataclass
class FeatureCache:
    """A finished cache folder, memory-mapped (nothing is read into memory until indexed)."""

    directory: Path
    hidden: np.ndarray
    labels: np.ndarray
    sequence: np.ndarray
    lm_head: np.ndarray
    lm_head_bias: np.ndarray | None
    meta: dict[str, Any]

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> FeatureCache:
        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise CacheError(f"No feature cache at {directory} (no {META_NAME}). Build one with `deco train cache`.")
        rebuild = "Rebuild the cache with `deco train cache`."
        meta = read_json_object(meta_path, error=CacheError, fix=rebuild)
        if meta.get("format") != CACHE_FORMAT:
            raise CacheError(f"{directory} has cache format {meta.get('format')!r}; this version reads {CACHE_FORMAT}. "
                             "Rebuild it with `deco train cache`.")

        def load(name: str) -> np.ndarray:
            # An empty or truncated file raises EOFError, which the CLI would report as just "Aborted."
            try:
                return np.load(directory / name, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:
                raise CacheError(f"{directory / name} is unreadable ({type(error).__name__}: {error}). {rebuild}") from None

        bias = load("lm_head_bias.npy") if (directory / "lm_head_bias.npy").is_file() else None
        cache = cls(directory, load("hidden.npy"), load("labels.npy"), load("sequence.npy"), load("lm_head.npy"),
                    bias, meta)
        if (cache.hidden.ndim != 2 or cache.labels.ndim != 1 or cache.lm_head.ndim != 2
                or cache.sequence.shape != cache.labels.shape
                or cache.hidden.shape[0] != cache.labels.shape[0] or cache.hidden.shape[1] != cache.lm_head.shape[1]):
            raise CacheError(f"{directory} is inconsistent: hidden {cache.hidden.shape}, labels {cache.labels.shape}, "
                             f"lm_head {cache.lm_head.shape}. Rebuild it with `deco train cache`.")
        return cache

    @property
    def tokens(self) -> int:
        return int(self.labels.shape[0])

    @property
    def base_model(self) -> BaseModelIdentity:
        return BaseModelIdentity.model_validate(self.meta["base_model"])

    def logits(self, hidden: Any) -> Any:
        """Raw LM logits ``h @ W^T (+ b)`` in float32 for a torch batch of cached hidden states."""
        torch = require("torch", purpose="Training heads")
        weight = self._torch_weight()
        logits = hidden.float() @ weight.T
        if self.lm_head_bias is not None:
            logits = logits + torch.from_numpy(np.array(self.lm_head_bias, dtype=np.float32))
        return logits

    def _torch_weight(self) -> Any:
        torch = require("torch", purpose="Training heads")
        if not hasattr(self, "_weight"):
            # One in-memory float32 copy (the memory map is read-only; torch wants writable arrays).
            self._weight = torch.from_numpy(np.array(self.lm_head, dtype=np.float32))
        return self._weight


def _write_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=False)


def build_cache(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    directory: str | os.PathLike[str],
    *,
    hidden_dtype: str = "float32",
    batch_size: int = 8,
    max_length: int = 1024,
    data_summary: dict[str, Any] | None = None,
    progress: bool | ProgressCallback = True,
    verify_tolerance: float = 2e-2,
) -> FeatureCache:
    """Run ``model`` once over ``records`` and write the cache folder ``directory``.

    The first batch is checked against the model's own logits: ``h @ W^T (+ b)`` must match the
    forward pass within ``verify_tolerance`` times the largest logit (models that post-process
    logits, e.g. soft-capping, fail here instead of training on the wrong distribution).
    """
    torch = require("torch", purpose="Caching training features")

    from ..hf.identity import model_identity

    if hidden_dtype not in HIDDEN_DTYPES:
        raise CacheError(f"`hidden_dtype` must be one of {HIDDEN_DTYPES}, got {hidden_dtype!r}.")
    started = time.perf_counter()
    encoded: list[tuple[int, list[int], list[int]]] = []
    skipped_long = 0
    for index, record in enumerate(records):
        prompt_ids, completion_ids = tokenize_record(tokenizer, record)
        if not completion_ids:
            continue
        if len(prompt_ids) + len(completion_ids) > max_length:
            skipped_long += 1
            continue
        encoded.append((index, prompt_ids, completion_ids))
    total_tokens = sum(len(c) for _, _, c in encoded)
    if total_tokens == 0:
        raise CacheError(
            f"The {len(records)} record(s) hold no usable completion tokens (empty completions, or every record is "
            f"longer than max_length={max_length}). Nothing to train on: check the data or raise --max-length."
        )
    lm_head = model.get_output_embeddings()
    weight = lm_head.weight.detach().float().cpu()
    bias = getattr(lm_head, "bias", None)
    bias = bias.detach().float().cpu() if bias is not None else None
    hidden_size = int(weight.shape[1])

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        hidden_out = np.lib.format.open_memmap(staging / "hidden.npy", mode="w+", dtype=np.dtype(hidden_dtype),
                                               shape=(total_tokens, hidden_size))
        labels_out = np.empty(total_tokens, dtype=np.int64)
        sequence_out = np.empty(total_tokens, dtype=np.int32)
        captured: dict[str, Any] = {}
        verify = {"done": False, "max_abs_diff": None, "max_abs_logit": None}

        def keep_input_only(module: Any, args: tuple[Any, ...]) -> Any:
            # Store the LM head's input; hand the head only the last position so the full
            # [batch, length, vocab] logits are never computed (except in the verified first batch).
            captured["hidden"] = args[0].detach()
            if verify["done"]:
                return (args[0][:, -1:, :],) + tuple(args[1:])
            return None

        handle = lm_head.register_forward_pre_hook(keep_input_only)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][1]) + len(encoded[i][2]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        cursor = 0
        try:
            with ProgressBar("caching", len(batches), progress=progress) as bar:
                for batch in batches:
                    rows = [encoded[i][1] + encoded[i][2] for i in batch]
                    length = max(len(r) for r in rows)
                    # Right padding: positions of real tokens are the same as without padding.
                    input_ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in rows])
                    attention = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
                    with torch.no_grad():
                        output = model(input_ids=input_ids, attention_mask=attention, use_cache=False)
                    hidden = captured.pop("hidden")
                    for row_in_batch, i in enumerate(batch):
                        record_index, prompt_ids, completion_ids = encoded[i]
                        start = len(prompt_ids) - 1  # the state at position t predicts token t + 1
                        count = len(completion_ids)
                        h = hidden[row_in_batch, start : start + count]
                        hidden_out[cursor : cursor + count] = h.float().numpy().astype(hidden_dtype)
                        labels_out[cursor : cursor + count] = completion_ids
                        sequence_out[cursor : cursor + count] = record_index
                        if not verify["done"]:
                            direct = output.logits[row_in_batch, start : start + count].float()
                            recomputed = h.float() @ weight.T + (bias if bias is not None else 0.0)
                            diff = float((direct - recomputed).abs().max())
                            scale = float(direct.abs().max())
                            verify["max_abs_diff"] = max(diff, verify["max_abs_diff"] or 0.0)
                            verify["max_abs_logit"] = max(scale, verify["max_abs_logit"] or 0.0)
                        cursor += count
                    if not verify["done"]:
                        verify["done"] = True
                        if verify["max_abs_diff"] > verify_tolerance * max(verify["max_abs_logit"], 1.0):
                            raise CacheError(
                                f"Logits recomputed from the LM head's input differ from the model's own logits by "
                                f"{verify['max_abs_diff']:.4g} (largest logit {verify['max_abs_logit']:.4g}): this "
                                "model post-processes its logits, which the heads cannot reproduce from h @ W^T."
                            )
                    bar.update(advance=1)
        finally:
            handle.remove()
        hidden_out.flush()
        del hidden_out
        _write_npy(staging / "labels.npy", labels_out)
        _write_npy(staging / "sequence.npy", sequence_out)
        _write_npy(staging / "lm_head.npy", weight.numpy())
        if bias is not None:
            _write_npy(staging / "lm_head_bias.npy", bias.numpy())
        wall = time.perf_counter() - started
        forwarded = sum(len(e[1]) + len(e[2]) for e in encoded)
        meta = {
            "format": CACHE_FORMAT,
            "base_model": model_identity(model).model_dump(mode="json"),
            "hidden_dtype": hidden_dtype,
            "hidden_size": hidden_size,
            "vocab_size": int(weight.shape[0]),
            "records": len(records),
            "records_used": len(encoded),
            "records_skipped_too_long": skipped_long,
            # Per input record (the index `sequence.npy` refers to): lets `fit --sources` pick a subset.
            "record_sources": [str(r.get("source", "user")) for r in records],
            # Per input record, for outcome-driven objectives (rollouts.py): the prompt group, the
            # reward, the behaviour temperature / top-p and the number of identical draws merged.
            "record_info": [{k: r.get(k) for k in RECORD_INFO_KEYS} for r in records]
            if any("reward" in r or "steer" in r for r in records) else None,
            "completion_tokens": total_tokens,
            "forwarded_tokens": forwarded,
            "verify": {"max_abs_logit_diff": verify["max_abs_diff"], "max_abs_logit": verify["max_abs_logit"]},
            "data_summary": data_summary,
            "wall_seconds": round(wall, 2),
            "tokens_per_second": round(forwarded / wall, 1),
        }
        (staging / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(directory, old)
        os.replace(staging, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return FeatureCache.open(directory)
