"""``rqcompile lower`` (checkpoint → artifact) and ``rqcompile demo`` at toy size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rqcompile as rq
from rqcompile.cli import main


def test_lower_reference_then_inspect(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "m.rq"
    code = main(["--json", "lower", str(ckpt), "--target", "reference", "-o", str(dest)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["output"] == str(dest) and data["kernels"] == ["int_matmul"]
    assert data["max_abs_diff"] < 1e-4
    x = torch.randn(8, 64)
    qat = rq.load_qat(ckpt)
    torch.testing.assert_close(rq.load(dest)(x), qat(x), rtol=1e-4, atol=1e-4)
    assert main(["inspect", str(dest)]) == 0
    out = capsys.readouterr().out
    assert 'target={"kind": "reference"}' in out and "int_matmul" in out


def test_lower_default_output_name(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    assert main(["-q", "lower", str(ckpt), "--target", "reference", "--no-check"]) == 0
    assert capsys.readouterr().out == ""
    assert ckpt.with_suffix(".rq").is_file()


@pytest.mark.parametrize(
    "args, kind, text",
    [
        (["--target", "cuda9"], "TargetError", "unknown target kind 'cuda9'"),
        (["--target", "llvm -mcpu=znver3"], "TargetError", "option strings are not accepted"),
        (["-o", "no/such/dir/m.rq"], "FileNotFoundError", "output directory does not exist"),
    ],
)
def test_lower_errors(
    capsys: pytest.CaptureFixture[str], ckpt: Path, args: list[str], kind: str, text: str
) -> None:
    code = main(["lower", str(ckpt), *args])
    err = capsys.readouterr().err
    assert code == 1 and f"{kind}: " in err and text in err and "Traceback" not in err
    assert not ckpt.with_suffix(".rq").exists()


def test_lower_missing_and_foreign_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["lower", str(tmp_path / "nope.safetensors")]) == 1
    assert "ArtifactError: " in capsys.readouterr().err
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    assert main(["lower", str(plain), "--target", "reference"]) == 1
    assert "not an rqcompile QAT checkpoint" in capsys.readouterr().err


@pytest.mark.tvm
def test_lower_llvm(capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.rq"
    assert main(["--json", "lower", str(ckpt), "--target", "llvm", "-o", str(dest)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"].startswith('{"kind": "llvm"') and data["max_abs_diff"] < 1e-4


def test_demo_json_saves_checkpoint_that_lowers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ck, art = tmp_path / "demo.safetensors", tmp_path / "demo.rq"
    argv = ["--json", "demo", "--steps", "2", "--batch-size", "2", "--block-size", "8"]
    argv += ["--n-embd", "32", "--n-head", "2", "--n-layer", "1", "--target", "reference"]
    argv += ["--gen-chars", "3", "--save-checkpoint", str(ck), "--save", str(art)]
    code = main(argv)
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout holds exactly one JSON object
    assert code == 0 and set(data["runs"]) == {"fp32", "STE", "ridge"}
    assert "== training" in err  # the narrative went to stderr
    assert (
        main(["-q", "lower", str(ck), "--target", "reference", "-o", str(tmp_path / "b.rq")]) == 0
    )
    x = torch.randint(0, 5, (2, 8))
    torch.testing.assert_close(rq.load(art)(x), rq.load(tmp_path / "b.rq")(x))


def test_lower_dynamic_writes_a_symbolic_artifact(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path
) -> None:
    from rqcompile.targets.dynamic import DynamicModule

    dest = tmp_path / "dyn.rq"
    code = main(
        ["--json", "lower", str(ckpt), "--target", "reference", "--dynamic", "-o", str(dest)]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["max_abs_diff"] < 1e-4
    exe = rq.load(dest)
    assert isinstance(exe, DynamicModule) and exe.shapes.describe().startswith("batch in [1, 64]")
    qat = rq.load_qat(ckpt)
    x = torch.randn(3, 64)  # the checkpoint was saved at batch 8
    torch.testing.assert_close(exe(x), qat(x), rtol=1e-4, atol=1e-4)
    assert main(["inspect", str(dest)]) == 0  # read, not loaded: the IR's declaration
    assert "dynamic dims: batch in [1, 64] (x axis 0)" in capsys.readouterr().out


def test_lower_one_build_stores_the_kernels(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path
) -> None:
    import zipfile

    from rqcompile.targets.dynamic import DynamicModule

    assert main(["lower", str(ckpt), "--one-build", "-o", str(tmp_path / "x.rq")]) != 0
    assert "--one-build needs --dynamic" in capsys.readouterr().err
    dest = tmp_path / "one.rq"
    args = ["lower", str(ckpt), "--target", "llvm", "--dynamic", "--one-build", "-o", str(dest)]
    assert main(args) == 0
    assert "kernels.so" in zipfile.ZipFile(dest).namelist()  # one library for every shape
    exe = rq.load(dest)
    assert isinstance(exe, DynamicModule) and exe.specialize == "none"
    qat = rq.load_qat(ckpt)
    for b in (1, 3, 64):
        x = torch.randn(b, 64)
        assert rq.check_parity(qat, exe, x).ok
