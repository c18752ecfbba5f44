"""``rqcompile opt`` in a fresh process: it lists the IR passes, runs each on the demo model's
IR, and a failing pass prints a replay command that works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import rqcompile as rq
from rqcompile.demo.models import CharTransformer
from rqcompile.errors import PassError
from rqcompile.ir.printer import print_module
from rqcompile.passes.infra import PassContext, PassManager, PassResult

PASSES = ["fold-constants", "eliminate-dead-code", "fuse-attention", "fuse-attention{lanes=8}",
          "select-kernels", "select-kernels{features=avx2}",
          "select-kernels{force=int_matmul:generic+quantize:avx2}",
          "select-kernels{features=avx2},fuse-prologue{ops=layer_norm+gelu},pack-weights"]  # fmt: skip


def _opt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rqcompile", "opt", *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def demo_ir(tmp_path_factory: Any) -> Path:
    torch.manual_seed(0)
    model, ex = CharTransformer(65), (torch.zeros(2, 64, dtype=torch.long),)
    path = tmp_path_factory.mktemp("opt") / "m.mlir"
    path.write_text(print_module(rq.convert(rq.prepare(model, ex, "A4W4").eval()),
                                 elide_constants=False))  # fmt: skip
    return path


def test_help_lists_every_ir_pass() -> None:
    out = _opt("--help").stdout
    for name in ("fold-constants", "eliminate-dead-code", "fuse-attention", "fuse-prologue",
                 "select-kernels", "pack-weights"):  # fmt: skip
        assert f"  {name}:" in out, name


def test_a_fresh_process_runs_the_build_passes(demo_ir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tvm")  # select-kernels and pack-weights read the llvm kernel table
    out = tmp_path / "out.mlir"
    r = _opt("--passes", PASSES[-1], str(demo_ir), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert 'rq.weight_layout = "panels"' in out.read_text()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("passes", PASSES)
def test_each_pass_runs_on_the_demo_ir(passes: str, demo_ir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    from rqcompile.cli import main

    out = tmp_path / "out.mlir"
    assert main(["opt", "--passes", passes, str(demo_ir), "-o", str(out)]) == 0
    assert out.read_text().startswith("// rq.constants")


def test_unknown_pass_and_option_say_what_exists(demo_ir: Path) -> None:
    r = _opt("--passes", "fold-everything", str(demo_ir))
    assert r.returncode == 1 and "registered passes:" in r.stderr and "fold-constants" in r.stderr
    r = _opt("--passes", "fuse-attention{width=8}", str(demo_ir))
    assert r.returncode == 1 and "options: lanes" in r.stderr


def test_a_failing_pass_prints_a_replay_that_works(tmp_path: Path) -> None:
    """A pass that crashes inside a pipeline saves its input; the printed command, run in a
    fresh process, reaches the same pass on the same IR (which is registered there too)."""
    from dataclasses import dataclass
    from typing import ClassVar

    from rqcompile.passes.ir import EliminateDeadCode

    @dataclass(frozen=True)
    class _Boom:
        name: ClassVar[str] = "eliminate-dead-code"  # a registered name, so a replay exists

        def run(self, ir: Any, ctx: Any) -> PassResult[Any]:
            raise RuntimeError("boom")

    b = rq.ir.Builder()
    x = b.arg("tensor<2x3xf32>")
    b.ret(b.op("rq.relu", x))
    with pytest.raises(PassError) as err:
        PassManager([_Boom()]).run(b.module(), PassContext(dump_dir=str(tmp_path)))
    msg = str(err.value)
    assert "RuntimeError: boom" in msg
    # _Boom is not the registered class, so the message names no replay for it; the
    # registered pass of that name gets one:
    with pytest.raises(PassError) as err2:
        bad = EliminateDeadCode()
        object.__setattr__(bad, "run", lambda ir, ctx: (_ for _ in ()).throw(RuntimeError("x")))
        PassManager([bad]).run(b.module(), PassContext(dump_dir=str(tmp_path)))
    (cmd,) = re.findall(r"Replay: python -m rqcompile opt --passes (\S+) (\S+)", str(err2.value))
    r = _opt("--passes", cmd[0], cmd[1])
    assert r.returncode == 0, r.stderr
    assert '"rq.relu"' in r.stdout
