"""The rqcompile command: help, output modes, inspect, draw, bench, and error paths.

Error paths must give a typed one-line message on stderr, exit status 1 and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from rqcompile.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for cmd in ("demo", "inspect", "lower", "draw", "bench", "opt"):
        assert f"\n    {cmd}" in out
    assert "examples:" in out and "rqcompile lower ckpt.safetensors --target llvm" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0 and out.startswith("usage: rqcompile")


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["compile"])
    assert e.value.code == 2 and "invalid choice: 'compile'" in capsys.readouterr().err


def test_entry_point_runs_as_module() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "rqcompile", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("rqcompile ")


def test_inspect_model_name_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "tiny-mlp", "--preset", "A4W4", "--explain")
    assert code == 0
    assert "quantize → ridge dequant" in out and "matmul-like ops quantized" in out
    assert "rule" in out  # the explain table
    code, out, _ = run(capsys, "--json", "inspect", "tiny-mlp", "--preset", "A2W2")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["kind"] == "model"
    assert [r["layer"] for r in data["layers"]] == ["fc1", "fc2", "head"]
    assert {r["format"] for r in data["layers"]} == {"A2W2"}
    assert data["config"]["default"]["weight"]["bits"] == 2


def test_inspect_checkpoint_with_ir(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    code, out, _ = run(capsys, "inspect", str(ckpt), "--ir")
    assert code == 0
    assert "float: head (kept in float by the config)" in out
    assert '"rq.int_matmul"' in out  # the integer IR of the A4W4 layers


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "tiny-mlp", "-q")
    assert (code, out, err) == (0, "", "")


@pytest.mark.parametrize(
    "argv, kind, text",
    [
        (["inspect", "missing.rq"], "ConfigError", "no such file, and not a model name"),
        (["inspect", "tiny-mlp", "--preset", "A4W4+2/4"], "ConfigError", "A4W4+2:4"),
        (["draw", "tiny-mlp", "-o", "g.gif"], "ConfigError", "is not one of svg, png"),
        (["opt", "--passes", "no-such-pass", "x.mlir"], "ConfigError", "registered passes"),
    ],
)
def test_errors_are_typed_one_liners(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    kind: str,
    text: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith(f"rqcompile {argv[0]}: {kind}: ") and text in err
    assert "Traceback" not in err


def test_inspect_rejects_a_foreign_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    code, _, err = run(capsys, "inspect", str(f))
    assert code == 1 and "ArtifactError" in err and "neither an artifact" in err


def test_json_errors_are_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "--json", "inspect", str(tmp_path / "nope.rq"))
    data = json.loads(out)
    assert code == 1 and data["ok"] is False and data["error"] == "ConfigError"


def test_draw_writes_dot_and_svg(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dot = tmp_path / "g.dot"
    code, out, _ = run(capsys, "draw", "tiny-mlp", "--diff", "-o", str(dot))
    assert code == 0 and "dot-text" in out
    text = dot.read_text()
    assert "fc1.weight 128×64" in text and "#7bd87b" in text  # weight shape; added = green
    code, out, _ = run(capsys, "--json", "draw", "tiny-mlp", "--ir", "-o", str(tmp_path / "g.svg"))
    assert code == 0 and json.loads(out)["renderer"] in ("graphviz", "matplotlib")
    assert (tmp_path / "g.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_bench_missing_module_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rqcompile.bench", None)  # import → ModuleNotFoundError
    code, out, err = run(capsys, "bench", "--quick")
    assert code == 1 and "rqcompile.bench) is not part of this installation" in err
    assert "Traceback" not in err


def test_bench_forwards_argv_verbatim(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("rqcompile.bench")
    fake.main = lambda argv: seen.append(argv) or print("bench table") or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rqcompile.bench", fake)
    code, out, _ = run(capsys, "bench", "--quick", "--help", "-o", "x")
    assert code == 0 and seen == [["--quick", "--help", "-o", "x"]] and "bench table" in out
    code, out, _ = run(capsys, "-q", "bench", "--quick")
    assert code == 0 and out == "" and seen[-1] == ["--quick"]
    code, out, err = run(capsys, "--json", "bench")
    assert json.loads(out) == {"ok": True, "command": "bench", "exit_status": 0}
    assert "bench table" in err
    calls = len(seen)
    code, out, err = run(capsys, "inspect", "bench")  # a file or model called "bench"
    assert code == 1 and len(seen) == calls and "'bench': no such file" in err
