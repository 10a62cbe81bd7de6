"""``export_lm``: a causal LM to ONNX through Optimum, with KV cache and a ``last_hidden_state`` output.

Optimum exports the graph (``text-generation-with-past``: inputs ``input_ids``, ``attention_mask``,
``position_ids`` and the past key/values; outputs ``logits`` and the present key/values). We then add
the LM-head input as the ``last_hidden_state`` output (see :mod:`.graph`), save the weights as one
external-data file, and validate the result against the torch model it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ExportValidationError
from .._io import atomic_write_bytes, current_umask
from ..fingerprint import identity_from_lm_head, matrix_row_reader
from ..manifest import BaseModelIdentity
from .graph import EXPORT_INFO_NAME, HIDDEN_STATE_OUTPUT, ONNX_DATA_NAME, ONNX_MODEL_NAME, add_hidden_state_output

EXPORT_FORMAT_VERSION = 1
# fp32 export vs the fp32 torch model: differences are float rounding (~1e-5 on the default model).
DEFAULT_ATOL = 1e-3



@dataclass
class ExportReport:
    """What :func:`export_lm` wrote and how closely it matches torch (also saved as ``deco_export.json``)."""

    directory: str
    base_model: dict[str, Any]
    max_abs_diff_logits: float
    max_abs_diff_hidden_state: float
    atol: float
    validation_inputs: str
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = EXPORT_FORMAT_VERSION
    hidden_state_output: str = HIDDEN_STATE_OUTPUT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


@contextlib.contextmanager
def _quiet_export_warnings() -> Iterator[None]:
    """The TorchScript tracer warns about every Python branch on tensor shapes in transformers' code.

    Those warnings are about third-party code paths that Optimum's export handles; the validation
    after the export is what tells whether the exported graph is right.
    """
    torch = require("torch", purpose="Exporting an LM")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def export_lm(
    model: Any,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    name: str | None = None,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a causal LM to ``out_dir`` for ONNX Runtime, with KV cache and ``last_hidden_state``.

    Args:
        model: a local model folder (``save_pretrained`` layout) or an in-memory ``PreTrainedModel``.
        out_dir: the folder to create (``model.onnx``, ``model.onnx_data``, configs, tokenizer files,
            ``deco_export.json``). It is written under a temporary name and renamed when complete.
        tokenizer: saved next to the model when given (loaded from the folder when ``model`` is a path).
        name: the base-model name recorded for compatibility messages (default: the folder name).
        atol: largest accepted max-abs difference of logits vs the torch model (fp32 export).
        overwrite: replace an existing ``out_dir``.
        on_stage: called with a short description before each stage (the CLI shows it as progress).

    Returns the :class:`ExportReport` (also written to ``out_dir/deco_export.json``). Raises
    :class:`ExportValidationError` when the export does not match torch within ``atol``.
    """
    # optimum first: its install hint (the `ort` extra) also brings torch and transformers
    require("optimum.exporters.onnx", purpose="Exporting an LM to ONNX (`deco export-lm`)")
    torch = require("torch", purpose="Exporting an LM", extra="ort")
    onnx = require("onnx", purpose="Exporting an LM to ONNX")
    from optimum.exporters.onnx import onnx_export_from_model

    from .compat import load_causal_lm, load_tokenizer

    stage = on_stage or (lambda _message: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass `overwrite=True` (`--overwrite`) or pick another folder.")
    if isinstance(model, (str, os.PathLike)):
        source = Path(model)
        if not (source / "config.json").is_file():
            raise FileNotFoundError(
                f"No model folder at {str(source)!r} (no config.json). Pass a folder written by `save_pretrained`."
            )
        stage(f"loading {source} (float32)")
        name = name or source.name
        if tokenizer is None and (source / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(source)
        model = load_causal_lm(source, dtype=torch.float32)
    else:
        model = model.float().eval()
    name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as work:
        raw_dir, final_dir = Path(work) / "optimum", Path(work) / "final"
        stage("exporting with Optimum (text-generation-with-past)")
        with _quiet_export_warnings():
            onnx_export_from_model(model, raw_dir, task="text-generation-with-past", do_validation=False)

        stage(f"adding the `{HIDDEN_STATE_OUTPUT}` output")
        proto = onnx.load(str(raw_dir / ONNX_MODEL_NAME))
        add_hidden_state_output(proto)
        onnx.checker.check_model(proto, full_check=False)
        final_dir.mkdir()
        onnx.save_model(proto, str(final_dir / ONNX_MODEL_NAME), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=ONNX_DATA_NAME, size_threshold=1024)
        del proto
        for item in raw_dir.iterdir():
            if item.suffix == ".json":
                shutil.copyfile(item, final_dir / item.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(final_dir)

        stage("validating against torch")
        logits_diff, hidden_diff, described = _validate(model, final_dir)
        identity = exported_identity(final_dir, name=name, architecture=_architecture(model))
        report = ExportReport(
            directory=str(out_dir),
            base_model=identity.model_dump(mode="json"),
            max_abs_diff_logits=logits_diff,
            max_abs_diff_hidden_state=hidden_diff,
            atol=atol,
            validation_inputs=described,
            versions=_versions(),
        )
        if not (logits_diff <= atol):  # also catches NaN
            raise ExportValidationError(
                f"The exported LM differs from torch by {logits_diff:.3g} in logits (hidden state {hidden_diff:.3g}), "
                f"more than atol={atol}. The architecture may not export faithfully with this Optimum version; "
                "nothing was written."
            )
        atomic_write_bytes(final_dir / EXPORT_INFO_NAME, report.to_json().encode())
        _make_readable(final_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(final_dir, out_dir)
    return report


def _make_readable(directory: Path) -> None:
    # Temporary-file helpers create files as 0600; an export is meant to be shared like a model folder.
    umask = current_umask()
    for item in directory.iterdir():
        item.chmod(0o666 & ~umask)
    directory.chmod(0o777 & ~umask)


def _architecture(model: Any) -> str:
    architectures = getattr(model.config, "architectures", None)
    return str(architectures[0]) if architectures else type(model).__name__


def exported_identity(directory: str | os.PathLike[str], *, name: str, architecture: str) -> BaseModelIdentity:
    """Base-model identity of an exported LM, fingerprinted from the LM-head weight inside the ONNX file."""
    from .graph import lm_head_weight

    weight = lm_head_weight(Path(directory) / ONNX_MODEL_NAME)
    return identity_from_lm_head(matrix_row_reader(weight), weight.shape[0], weight.shape[1], name=name,
                                 architecture=architecture)


def _validate(model: Any, directory: Path) -> tuple[float, float, str]:
    """Max |ORT - torch| of logits and LM-head input: a left-padded batch of 2, prefill then one cached step."""
    torch = require("torch", purpose="Validating an exported LM")
    from .runtime import OnnxCausalLM

    lm = OnnxCausalLM(directory)
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # row 1 is left padded
    next_ids = torch.randint(3, vocab, (2, 1), generator=generator)

    captured: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    try:
        with torch.no_grad():
            position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
            first = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
            mask2 = torch.cat([attention_mask, torch.ones_like(next_ids)], dim=1)
            second = model(input_ids=next_ids, attention_mask=mask2, position_ids=position_ids[:, -1:] + 1,
                           past_key_values=first.past_key_values, use_cache=True)
    finally:
        handle.remove()

    step1, cache = lm.prefill(input_ids.numpy(), attention_mask.numpy())
    step2, _ = lm.step(cache, next_ids.numpy())
    valid = attention_mask.numpy().astype(bool)
    logits_diff = max(
        float(np.abs(step1.logits - first.logits.numpy())[valid].max()),
        float(np.abs(step2.logits - second.logits.numpy()).max()),
    )
    hidden_diff = max(
        float(np.abs(step1.hidden_states - captured[0].numpy())[valid].max()),
        float(np.abs(step2.hidden_states - captured[1].numpy()).max()),
    )
    return logits_diff, hidden_diff, "random ids, batch 2 (row 1 left-padded by 3), 7-token prefill + 1 cached step"
