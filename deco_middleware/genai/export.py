"""``export_genai``: a transformers model folder to an onnxruntime-genai model with its hidden state.

The graph comes from genai's own builder (``python -m onnxruntime_genai.models.builder -p fp32 -e cpu
--extra_options include_hidden_states=true``), which adds the final-norm output ``hidden_states``. We then
measure, before anything is kept:

- logits and hidden state against the torch fp32 model (a batch of two prompts of unequal length, the
  prefill and one cached step, through the same adapter the generation loop uses);
- logits against ``h @ W^T`` of genai's own hidden state and the torch LM-head weight. The builder was
  seen to break this on a tied-embedding model; SmolLM2 ties its embeddings, so it is checked on every export.

The numbers, the base-model identity and the versions go into ``deco_genai.json``. Needs torch and
transformers (the run time does not).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from .._io import atomic_write_bytes
from ..errors import GenaiExportError, MissingDependencyError
from .model import GENAI_CONFIG_NAME, GENAI_EXPORT_INFO_NAME, GenaiCausalLM, fix_command

GENAI_EXPORT_FORMAT_VERSION = 1
# fp32 genai vs fp32 torch: float rounding (measured 6e-5 in logits, 2e-5 in hidden state on the default model).
DEFAULT_GENAI_ATOL = 1e-3


@dataclass
class GenaiExportReport:
    """What :func:`export_genai` wrote and measured (also saved as ``deco_genai.json``)."""

    directory: str
    base_model: dict[str, Any]
    parity: dict[str, Any]
    builder_command: list[str]
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = GENAI_EXPORT_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def builder_command(source: Path, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out),
        "-p", "fp32", "-e", "cpu", "-c", str(cache), "--extra_options", "include_hidden_states=true",
    ]


def _run_builder(command: list[str], log_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log_path, "wb") as log:  # the builder prints a progress bar per tensor: keep it out of the terminal
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise GenaiExportError(
            f"onnxruntime-genai's builder failed (exit {done.returncode}): {' | '.join(tail)}. Command: {' '.join(command)}"
        )


def check_build_dependencies() -> Any:
    """Fail before any expensive work when genai's builder or torch is missing; returns torch."""
    try:
        require("onnxruntime_genai.models.builder", purpose="Building an onnxruntime-genai model (`--format genai`)")
    except MissingDependencyError as error:  # genai 0.18's builder imports model classes of transformers 5.x
        raise MissingDependencyError(
            f"{error}. The builder of onnxruntime-genai 0.18 needs transformers 5.x: "
            "pip install 'transformers>=5,<6' 'deco-middleware[genai]'"
        ) from error
    return require("torch", purpose="Validating an onnxruntime-genai export", extra="torch")


def measure_parity(model: Any, lm: GenaiCausalLM, *, vocab_size: int, lm_head_weight: np.ndarray) -> dict[str, Any]:
    """Max differences of genai vs the torch fp32 ``model`` on a padded batch of 2: prefill + one cached step.

    Also ``logits_vs_lm_head``: max |genai logits - genai hidden @ W^T| with the torch LM-head weight ``W``.
    """
    torch = require("torch", purpose="Validating an onnxruntime-genai export")
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in (9, 5)]
    next_ids = torch.randint(3, vocab_size, (2,), generator=generator).tolist()
    longest = max(len(p) for p in prompts)
    input_ids = np.zeros((2, longest), dtype=np.int64)
    mask = np.zeros((2, longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):  # left-padded, as the generation loop hands prompts over
        input_ids[row, longest - len(prompt):] = prompt
        mask[row, longest - len(prompt):] = 1
    first, cache = lm.prefill(input_ids, mask)
    second, _ = lm.step(cache, np.array(next_ids))

    logits_diff = hidden_diff = 0.0
    captured: list[Any] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    try:
        for row, prompt in enumerate(prompts):  # each row alone in torch: no padding question on that side
            captured.clear()
            with torch.no_grad():
                out = model(input_ids=torch.tensor([prompt + [next_ids[row]]]))
            torch_logits, torch_hidden = out.logits[0].float().numpy(), captured[0][0].float().numpy()
            for ours, position in ((first, len(prompt) - 1), (second, len(prompt))):
                logits_diff = max(logits_diff, float(np.abs(ours.logits[row, -1] - torch_logits[position]).max()))
                hidden_diff = max(hidden_diff, float(np.abs(ours.hidden_states[row, -1] - torch_hidden[position]).max()))
    finally:
        handle.remove()
    weight = np.asarray(lm_head_weight, dtype=np.float32)
    head_diff = max(
        float(np.abs(step.logits[:, -1] - step.hidden_states[:, -1] @ weight.T).max()) for step in (first, second)
    )
    return {
        "max_abs_diff_logits": logits_diff,
        "max_abs_diff_hidden_state": hidden_diff,
        "max_abs_diff_logits_vs_lm_head": head_diff,
        "inputs": "random ids, batch 2 (lengths 9 and 5, left-padded), prefill + 1 cached step, vs torch fp32 per row",
    }


def export_genai(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    atol: float = DEFAULT_GENAI_ATOL,
    overwrite: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> GenaiExportReport:
    """Build ``out_dir`` for onnxruntime-genai from the model folder ``source``, validated against torch fp32.

    Raises :class:`GenaiExportError` (and keeps nothing) when logits or hidden state differ from torch by more
    than ``atol``, or when the logits are not ``h @ W^T`` (a builder that mishandled the LM head).
    """
    torch = check_build_dependencies()
    from ..compat import load_causal_lm
    from ..ort.export import exported_identity

    stage = on_stage or (lambda _message: None)
    source, out_dir = Path(source), Path(out_dir)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"No model folder at {str(source)!r} (no config.json). Pass a folder written by `save_pretrained`.")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass `overwrite=True` (`--overwrite`) or pick another folder.")
    name = name or source.name
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as work:
        final_dir = Path(work) / "final"
        command = builder_command(source, final_dir, Path(work) / "cache")
        stage("building with onnxruntime-genai's builder (fp32, cpu, include_hidden_states=true)")
        _run_builder(command, Path(work) / "builder.log")
        if not (final_dir / GENAI_CONFIG_NAME).is_file():
            raise GenaiExportError(f"onnxruntime-genai's builder wrote no {GENAI_CONFIG_NAME}. Command: {' '.join(command)}")

        stage(f"loading {source} in torch (float32) to validate")
        model = load_causal_lm(source, dtype=torch.float32).eval()
        # The LM head is not checked at load here: the measurement below does it, with the torch weight.
        lm = GenaiCausalLM(final_dir, check_lm_head=False)
        stage("validating logits and hidden state against torch")
        torch_weight = model.get_output_embeddings().weight.detach().float().numpy()
        parity = measure_parity(model, lm, vocab_size=int(model.config.vocab_size), lm_head_weight=torch_weight)
        parity["atol"] = atol
        parity["tied_word_embeddings"] = bool(getattr(model.config, "tie_word_embeddings", False))
        architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
        identity = exported_identity(final_dir, name=name, architecture=str(architectures[0]))
        del lm
        if not parity["max_abs_diff_logits_vs_lm_head"] <= atol:  # also catches NaN
            raise GenaiExportError(
                f"onnxruntime-genai's builder produced logits that are not the LM head applied to its hidden state "
                f"(max |logits - h @ W^T| = {parity['max_abs_diff_logits_vs_lm_head']:.3g} > {atol:g}; tied embeddings: "
                f"{parity['tied_word_embeddings']}). Learned decoding needs both to agree, so nothing was kept. "
                "Untie the LM head before building (save the model with `tie_word_embeddings=False` and a copied "
                f"`lm_head.weight`), then run `{fix_command(source, out_dir)}` on that folder."
            )
        if not (parity["max_abs_diff_logits"] <= atol and parity["max_abs_diff_hidden_state"] <= atol):
            hint = (
                "The config ties the embeddings to the LM head: if the checkpoint holds an `lm_head.weight` that differs "
                "from the embeddings, the builder and transformers disagree on which one to use. Save the model with "
                f"`tie_word_embeddings=False` (or drop the extra `lm_head.weight`), then run `{fix_command(source, out_dir)}`."
                if parity["tied_word_embeddings"]
                else "This architecture may not build faithfully with this onnxruntime-genai version."
            )
            raise GenaiExportError(
                f"The onnxruntime-genai model differs from torch by {parity['max_abs_diff_logits']:.3g} in logits and "
                f"{parity['max_abs_diff_hidden_state']:.3g} in the hidden state, more than atol={atol:g}; nothing was kept. "
                + hint
            )
        report = GenaiExportReport(
            directory=str(out_dir), base_model=identity.model_dump(mode="json"), parity=parity,
            builder_command=["python", *builder_command(source, out_dir, Path("CACHE"))[1:]], versions=_versions(),
        )
        atomic_write_bytes(final_dir / GENAI_EXPORT_INFO_NAME, report.to_json().encode())
        for item in final_dir.iterdir():  # temporary-file helpers create 0600 files; a model folder is shared
            item.chmod(0o644)
        final_dir.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(final_dir, out_dir)
    return report
