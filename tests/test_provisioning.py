"""Provisioning the default model: two processes on one empty cache, and a first run's stdout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deco_middleware import default_model as dm

# A provisioning process whose conversion is replaced by a fake that takes DELAY seconds: the real
# one dequantizes 135M parameters for about a minute per process. Everything else is real: the
# lock, the re-check, the staging folder and the rename. Each conversion is logged to LOG.
_PROCESS = r"""
import hashlib, os, sys, time
from pathlib import Path
import deco_middleware.default_model as dm

log, delay = Path(sys.argv[1]), float(sys.argv[2])
dm.GGUF_SHA256 = hashlib.sha256(Path(os.environ[dm.WHEEL_ENV]).read_bytes()).hexdigest()

def fake_convert(gguf_path, output):
    with open(log, "a") as handle:
        handle.write(f"start {os.getpid()}\n")
    output.mkdir()
    time.sleep(delay)
    (output / "config.json").write_text(str(os.getpid()))
    with open(log, "a") as handle:
        handle.write(f"done {os.getpid()}\n")

dm._convert = fake_convert
path = dm.ensure_default_model()
owner = (path / "config.json").read_text()
print("ready", owner, flush=True)
# "In use": the folder must stay complete and unchanged while this process reads it.
deadline = time.time() + float(sys.argv[3])
while time.time() < deadline:
    if not (path / dm._DONE_MARKER).is_file() or (path / "config.json").read_text() != owner:
        print("LOST", flush=True)
        sys.exit(3)
    time.sleep(0.05)
print("ok", flush=True)
"""


def test_two_processes_on_one_empty_cache_convert_once_and_keep_the_folder(tmp_path):
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"GGUF" + b"\0" * 64)
    env = {**os.environ, dm.CACHE_ENV: str(tmp_path / "cache"), dm.WHEEL_ENV: str(fake_gguf),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = tmp_path / "conversions.log"
    script = tmp_path / "provision.py"
    script.write_text(_PROCESS)
    # The first process converts slowly; the second starts while it is converting and would be faster.
    slow = subprocess.Popen([sys.executable, str(script), str(log), "4", "3"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (log.is_file() and "start" in log.read_text()):
        assert time.time() < deadline and slow.poll() is None, slow.communicate()
        time.sleep(0.05)
    fast = subprocess.Popen([sys.executable, str(script), str(log), "0.2", "6"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=120) for process in (slow, fast)]
    for process, (out, err) in zip((slow, fast), outputs):
        assert process.returncode == 0, (out, err)
        assert "ok" in out.split()
    conversions = [line for line in log.read_text().splitlines() if line.startswith("done")]
    assert len(conversions) == 1, log.read_text()  # the second process waited and reused the folder
    owners = {out.split()[1] for out, _ in outputs}
    assert owners == {str(slow.pid)}
    assert "waiting for another process" in outputs[1][1]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == [dm.DEFAULT_MODEL_NAME]


def test_a_stale_unfinished_folder_is_replaced(tmp_path, monkeypatch):
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setenv(dm.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(dm.WHEEL_ENV, str(fake_gguf))
    monkeypatch.setattr(dm, "GGUF_SHA256", hashlib.sha256(fake_gguf.read_bytes()).hexdigest())
    stale = tmp_path / "cache" / dm.DEFAULT_MODEL_NAME
    stale.mkdir(parents=True)
    (stale / "half-written.bin").write_bytes(b"x")

    def fake_convert(gguf_path, output):
        output.mkdir()
        (output / "config.json").write_text("{}")

    monkeypatch.setattr(dm, "_convert", fake_convert)
    path = dm.ensure_default_model()
    assert sorted(p.name for p in path.iterdir()) == ["config.json", dm._DONE_MARKER]
