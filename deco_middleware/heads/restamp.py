"""Re-stamp a heads manifest with the current LM-head fingerprint, after checking the one it has.

    python -m deco_middleware.heads.restamp onnx/smollm2-135m-instruct --model default

For each heads folder: the heads are loaded and verified (sha256, graph contract, probe), the model's
LM head is checked against the fingerprint the manifest already holds (by that fingerprint's own
method, so heads are never re-stamped onto a model they were not trained for), and only then is
``base_model.lm_head_fingerprint`` replaced by the current method's. Nothing else in the manifest
changes, and the ONNX file is not touched. A manifest already stamped with the current method and
matching the model is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..errors import DecoError, IncompatibleHeadsError
from ..fingerprint import LEGACY_METHODS, METHOD, RowReader, fingerprints_match, lm_head_fingerprint, matrix_row_reader
from ..manifest import MANIFEST_NAME, HeadManifest
from .artifact import DecodingHeads, resolve_heads_path

__all__ = ["main", "restamp"]


def _reader(model: Any) -> tuple[RowReader, int, int]:
    if hasattr(model, "get_output_embeddings"):  # a transformers PreTrainedModel
        from ..hf.identity import _lm_head_weight, _row_reader

        weight = _lm_head_weight(model)
        return _row_reader(weight), int(weight.shape[0]), int(weight.shape[1])
    weight = getattr(model, "lm_head_weight", model)  # an OnnxCausalLM, or a [vocab, hidden] array
    return matrix_row_reader(weight), int(weight.shape[0]), int(weight.shape[1])


def restamp(heads: str | Path, model: Any) -> bool:
    """Re-stamp the manifest of ``heads`` for ``model``; ``True`` if it was rewritten.

    ``model``: a transformers ``PreTrainedModel``, an exported :class:`~deco_middleware.ort.OnnxCausalLM`,
    or the ``[vocab, hidden]`` LM-head matrix itself.
    """
    directory = resolve_heads_path(heads)
    loaded = DecodingHeads(directory)  # integrity, graph contract and probe: only sound heads are re-stamped
    base = loaded.manifest.base_model
    read_rows, vocab_size, hidden_size = _reader(model)
    if (hidden_size, vocab_size) != (base.hidden_size, base.vocab_size):
        raise IncompatibleHeadsError(
            f"{directory} is for hidden size {base.hidden_size} and vocab size {base.vocab_size}, the model has "
            f"{hidden_size} and {vocab_size}; not re-stamped."
        )
    old = base.lm_head_fingerprint
    current = lm_head_fingerprint(read_rows, vocab_size, hidden_size)
    if old.method in LEGACY_METHODS:
        actual = lm_head_fingerprint(read_rows, vocab_size, hidden_size, method=old.method)
    elif old.method == METHOD:
        actual = current
    else:
        raise IncompatibleHeadsError(f"{directory} has fingerprint method {old.method!r}, unknown to this version.")
    if not fingerprints_match(old, actual):
        raise IncompatibleHeadsError(
            f"{directory} does not fit this model by its own fingerprint ({old.method}); not re-stamped."
        )
    if old.method == METHOD:
        return False
    # Edit the JSON as written, so every other byte stays (NaN values in free-form sections included).
    path = directory / MANIFEST_NAME
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["base_model"]["lm_head_fingerprint"] = current.model_dump(mode="json")
    text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
    HeadManifest.from_json_text(text, source=str(path))  # what is written must load
    atomic_write_bytes(path, text.encode("utf-8"))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deco_middleware.heads.restamp", description=__doc__.split("\n\n")[0])
    parser.add_argument("heads", nargs="+", help="heads folders (or shipped names) to re-stamp")
    parser.add_argument(
        "--model", default="default",
        help="`default` (embedded SmolLM2), a local transformers model folder, or an exported ONNX LM folder",
    )
    args = parser.parse_args(argv)
    if (Path(args.model) / "model.onnx").is_file():  # an LM exported by `deco export-lm`: no torch needed
        from ..ort.runtime import OnnxCausalLM

        model: Any = OnnxCausalLM(args.model)
    else:
        from ..default_model import load_model

        model, _ = load_model(args.model)
    status = 0
    for heads in args.heads:
        try:
            changed = restamp(heads, model)
        except DecoError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
            continue
        print(f"{heads}: {'re-stamped with ' + METHOD if changed else 'already ' + METHOD + ', unchanged'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
