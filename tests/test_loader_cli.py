"""`deco info` and `deco generate --heads` report a bad heads folder as one error line, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("typer")
pytest.importorskip("transformers")
from typer.testing import CliRunner  # noqa: E402

from deco_middleware.cli import app as app_module  # noqa: E402
from deco_middleware.manifest import FORMAT_VERSION  # noqa: E402

ASSET = Path(__file__).parent / "assets" / "tiny_heads"


def newer_version(directory: Path) -> str:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["format_version"] = str(FORMAT_VERSION + 1)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return f"has format_version '{FORMAT_VERSION + 1}' (str), which is not an integer and reads as newer than {FORMAT_VERSION}"


def bad_utf8(directory: Path) -> str:
    path = directory / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b"tiny-asset-lm", b"tiny-\xff-lm"))
    return "manifest.json is not UTF-8 text (byte"


def deep_json(directory: Path) -> str:
    (directory / "manifest.json").write_text('{"format_version": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}")
    return "is JSON nested too deeply to be a manifest"


def symlink_out(directory: Path) -> str:
    (directory / "manifest.json").unlink()
    (directory / "manifest.json").symlink_to("/etc/passwd")
    return "outside its folder"


CASES = [newer_version, bad_utf8, deep_json, symlink_out]


@pytest.fixture
def wide_console(monkeypatch):
    # rich hard-wraps at the console width (80 under the test runner); a wide console shows that the
    # message itself is one line.
    monkeypatch.setattr(app_module.console, "width", 2000)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("make_bad", CASES, ids=[c.__name__ for c in CASES])
def test_deco_info_prints_one_error_line(make_bad, tmp_path, wide_console):
    heads = tmp_path / "heads"
    shutil.copytree(ASSET, heads)
    expected = make_bad(heads)
    result = CliRunner().invoke(app_module.app, ["info", str(heads)])
    assert result.exit_code == 2 and result.stdout == ""
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_model, tiny_tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("make_bad", CASES, ids=[c.__name__ for c in CASES])
def test_deco_generate_with_bad_heads_prints_one_error_line(make_bad, tmp_path, tiny_model_dir, wide_console):
    heads = tmp_path / "heads"
    shutil.copytree(ASSET, heads)
    expected = make_bad(heads)
    result = CliRunner().invoke(
        app_module.app, ["generate", "w1 w2", "--model", str(tiny_model_dir), "--heads", str(heads), "--max-new-tokens", "2"]
    )
    assert result.exit_code == 2 and result.stdout == ""
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
