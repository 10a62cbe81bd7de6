"""Fuzz the heads loader: seeded mutations of a real manifest and a real ONNX file.

Every outcome must be a successful load (heads that then run and answer ``check_compatible``) or one
error from the :class:`DecoError` root whose message is one line; any other exception or warning is a
defect. Starts from the committed ``tests/assets/tiny_heads`` (no torch, no onnx package needed).

    python tests/test_loader_fuzz.py [manifest cases] [onnx cases]   # prints the outcome table
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from deco_middleware import DecodingHeads
from deco_middleware._io import sha256_bytes
from deco_middleware.errors import DecoError, DecoWarning
from deco_middleware.fingerprint import METHOD, fingerprint_from_matrix
from deco_middleware.manifest import MANIFEST_NAME, ONNX_NAME, BaseModelIdentity, LMHeadFingerprint

ASSET = Path(__file__).parent / "assets" / "tiny_heads"
SEED = 18
MANIFEST_CASES = 300
ONNX_CASES = 200

# Values that broke, or could break, a loader: wrong types, huge numbers, paths, deep nesting.
_HUGE_INT = "__HUGE_INT__"
_NASTY = [
    None, True, False, 0, -1, 1, 2, 2.0, "2", "1", 1e308, -0.0, float("nan"), float("inf"), "", "x" * 300,
    "../outside", "/etc/passwd", "heads\x00.onnx", "\udcff", "é", [], {}, [1, 2], {"a": 1}, 10**30, _HUGE_INT,
    "lm-head-rows-v1", "lm-head-sketch-v2", [0.0] * 64, [float("nan")] * 64, "tensor(float)", "manifest.json",
]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:8]):
            yield from _paths(child, (*prefix, index))


def _set(root, path, value):
    target = root
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _delete(root, path):
    target = root
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]


def _byte_mutation(data: bytes, rng: random.Random, focus: tuple[int, int] | None = None) -> bytes:
    data = bytearray(data)
    op = rng.choice(["flip", "flip", "truncate", "delete", "insert", "duplicate"])
    low, high = focus or (0, len(data))
    high = min(max(high, low + 1), len(data))
    at = rng.randrange(low, high)
    if op == "flip":
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            data[rng.randrange(low, high)] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del data[at:]
    elif op == "delete":
        del data[at:at + rng.randrange(1, 64)]
    elif op == "insert":
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    else:
        data[at:at] = data[at:at + rng.randrange(1, 256)]
    return bytes(data)


def mutate_manifest(text: str, rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return _byte_mutation(text.encode("utf-8"), rng)
    raw = json.loads(text)
    paths = [p for p in _paths(raw) if p]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        path = rng.choice(paths)
        action = rng.random()
        try:
            if action < 0.7:
                _set(raw, path, rng.choice(_NASTY))
            elif action < 0.85:
                _delete(raw, path)
            elif action < 0.95:
                _set(raw, (*path[:-1], f"unknown_{rng.randrange(99)}"), 1) if isinstance(path[-1], str) else None
            else:
                depth = rng.choice([50, 65, 500, 1000, 5000])
                _set(raw, path, json.loads("[" * depth + "]" * depth) if depth < 900 else _HUGE_INT + "deep")
        except (KeyError, IndexError, TypeError):
            pass  # the path went away with an earlier mutation of this case
        paths = [p for p in _paths(raw) if p]
        if not paths:
            break
    out = json.dumps(raw, ensure_ascii=rng.random() < 0.5)
    out = out.replace(f'"{_HUGE_INT}deep"', "[" * 5000 + "]" * 5000)
    out = out.replace(f'"{_HUGE_INT}"', "9" * rng.choice([4300, 4301, 10000]))
    return out.encode("utf-8", "surrogatepass")


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    # The graph structure (nodes first, inputs/outputs last) is where a flip changes meaning; the
    # middle is mostly weight bytes. Aim there more often than a uniform choice would.
    where = rng.random()
    focus = (0, 3000) if where < 0.4 else (len(data) - 600, len(data)) if where < 0.7 else None
    return _byte_mutation(data, rng, focus)


def _identity() -> BaseModelIdentity:
    expected = json.loads((ASSET / "expected.json").read_text())
    lm_head = np.asarray(expected["lm_head"], dtype=np.float32)
    return BaseModelIdentity(
        name="tiny-asset-lm", architecture="SyntheticForCausalLM", hidden_size=lm_head.shape[1],
        vocab_size=lm_head.shape[0],
        lm_head_fingerprint=LMHeadFingerprint(method=METHOD, values=fingerprint_from_matrix(lm_head)),
    )


def _outcome(directory: Path, identity: BaseModelIdentity) -> str:
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed), \
            contextlib.redirect_stderr(printed):
        warnings.simplefilter("always")
        try:
            heads = DecodingHeads.from_pretrained(directory)
            rng = np.random.default_rng(0)
            t, p = heads.run(rng.standard_normal((2, heads.hidden_size)), rng.standard_normal((2, heads.vocab_size)))
            if t.shape != (2,) or p.shape != (2,):
                return f"DEFECT: outputs of shape {t.shape}, {p.shape}"
            heads.check_compatible(identity)
            result = "loaded"
        except DecoError as error:
            message = str(error)
            if "\n" in message or not message:
                return f"DEFECT: {type(error).__name__} message is not one line: {message[:200]!r}"
            result = type(error).__name__
        except Exception as error:  # noqa: BLE001 - anything else is what the fuzz is looking for
            return f"DEFECT: raw {type(error).__name__}: {str(error)[:200]}"
    if printed.getvalue():  # a library must not print (stdout may carry --json)
        return f"DEFECT: printed {printed.getvalue()[:200]!r}"
    stray = [w for w in caught if not issubclass(w.category, DecoWarning)]
    if stray:
        return f"DEFECT: warning {stray[0].category.__name__}: {str(stray[0].message)[:200]}"
    return result


def run_fuzz(manifest_cases: int = MANIFEST_CASES, onnx_cases: int = ONNX_CASES, seed: int = SEED) -> list[tuple[str, str]]:
    """``[(case, outcome)]`` for every mutation; outcome is ``loaded``, an error class name, or ``DEFECT: ...``."""
    rng = random.Random(seed)
    identity = _identity()
    manifest_text = (ASSET / MANIFEST_NAME).read_text()
    onnx_bytes = (ASSET / ONNX_NAME).read_bytes()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "heads"
        for case in range(manifest_cases + onnx_cases):
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(ASSET, work)
            if case < manifest_cases:
                name = f"manifest-{case}"
                (work / MANIFEST_NAME).write_bytes(mutate_manifest(manifest_text, rng))
            else:
                name = f"onnx-{case - manifest_cases}"
                mutated = mutate_onnx(onnx_bytes, rng)
                (work / ONNX_NAME).write_bytes(mutated)
                if rng.random() < 0.85:  # re-pin, so the bytes reach the ONNX reader and ONNX Runtime
                    raw = json.loads(manifest_text)
                    raw["onnx"]["sha256"] = sha256_bytes(mutated)
                    (work / MANIFEST_NAME).write_text(json.dumps(raw))
            results.append((name, _outcome(work, identity)))
    return results


def test_every_fuzzed_load_succeeds_or_raises_from_the_root():
    results = run_fuzz()
    defects = [f"{case}: {outcome}" for case, outcome in results if outcome.startswith("DEFECT")]
    assert not defects, "\n".join(defects[:20])
    outcomes = Counter(outcome for _, outcome in results)
    # The corpus must exercise both sides: some mutations load, most are refused, by several checks.
    assert outcomes["loaded"] > 0 and len(outcomes) >= 4, outcomes


if __name__ == "__main__":
    manifests = int(sys.argv[1]) if len(sys.argv) > 1 else MANIFEST_CASES
    onnx_files = int(sys.argv[2]) if len(sys.argv) > 2 else ONNX_CASES
    started = time.perf_counter()
    results = run_fuzz(manifests, onnx_files)
    seconds = time.perf_counter() - started
    for kind in ("manifest", "onnx"):
        counts = Counter(outcome for case, outcome in results if case.startswith(kind))
        print(f"{kind}: {sum(counts.values())} cases: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for case, outcome in results:
        if outcome.startswith("DEFECT"):
            print(case, outcome)
    print(f"{len(results)} cases in {seconds:.1f} s")
