"""Train AutoDeco heads on one CPU: rejection-sampled data, a feature cache, the loss, the trainer.

Stages (each runnable alone, see ``deco train --help``):

1. :func:`rejection_sample` / :func:`read_jsonl` — prompt/completion records;
2. :func:`build_cache` — final-norm hidden states and labels of the completion tokens, memory-mapped;
3. :func:`fit` — AdamW on :func:`autodeco_loss`, validated, checkpointed and resumable;
4. :func:`export_trained_heads` — ``heads.onnx`` + manifest with the training record.
"""

from .cache import CacheError, FeatureCache, build_cache, tokenize_record
from .data import (
    TRAINING_TASKS,
    CompletionSampler,
    EngineSampler,
    SampledText,
    SamplingConfig,
    TrainingDataError,
    make_problems,
    read_jsonl,
    rejection_sample,
    write_jsonl,
)
from .export import export_trained_heads, training_record
from .grading import grade_reply, is_correct
from .loss import (
    LossConfig,
    autodeco_loss,
    hard_nucleus,
    hard_nucleus_from_logits,
    soft_top_p_label_probability,
    soft_top_p_label_probability_windowed,
)
from .trainer import FitResult, TrainConfig, TrainingInterrupted, evaluate, fit, split_tokens

__all__ = [
    "CacheError",
    "CompletionSampler",
    "EngineSampler",
    "FeatureCache",
    "FitResult",
    "LossConfig",
    "SampledText",
    "SamplingConfig",
    "TRAINING_TASKS",
    "TrainConfig",
    "TrainingDataError",
    "TrainingInterrupted",
    "autodeco_loss",
    "build_cache",
    "evaluate",
    "export_trained_heads",
    "fit",
    "grade_reply",
    "hard_nucleus",
    "hard_nucleus_from_logits",
    "is_correct",
    "make_problems",
    "read_jsonl",
    "rejection_sample",
    "soft_top_p_label_probability",
    "soft_top_p_label_probability_windowed",
    "split_tokens",
    "tokenize_record",
    "training_record",
    "write_jsonl",
]
