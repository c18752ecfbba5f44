"""Pass infrastructure: DumpIR, and a failing pass saving its input with a working replay."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import rqcompile as rq
from rqcompile.cli import main
from rqcompile.ir.parser import parse_module
from rqcompile.ir.verify import verify
from rqcompile.passes.infra import PassContext, PassManager, PassResult, register_pass
from rqcompile.testing.models import TinyMLP


@register_pass
@dataclass(frozen=True)
class Explode:
    name: ClassVar[str] = "test-explode"

    def run(self, ir: Any, ctx: PassContext) -> PassResult[Any]:
        raise ValueError("boom in a test pass")


@register_pass
@dataclass(frozen=True)
class Same:
    name: ClassVar[str] = "test-same"

    def run(self, ir: Any, ctx: PassContext) -> PassResult[Any]:
        return PassResult(ir, False)


@pytest.fixture(scope="module")
def ir() -> Any:
    ex = (torch.randn(8, 64),)
    return rq.convert(rq.prepare(TinyMLP(), ex, "A4W4"))


def test_dump_ir_writes_each_pass(tmp_path: Path, ir: Any) -> None:
    dump = rq.DumpIR(tmp_path / "d", inputs=True, constants=True)
    PassManager([Same(), Same()], verifier=verify).run(ir, PassContext(instruments=[dump]))
    names = [f.name for f in dump.files]
    assert names == [
        "001_test-same.before.mlir",
        "001_test-same.after.mlir",
        "002_test-same.before.mlir",
        "002_test-same.after.mlir",
    ]
    assert parse_module(dump.files[-1].read_text()) == ir  # constants embedded: self-contained


def test_dump_ir_on_prepare_writes_fx_text(tmp_path: Path) -> None:
    dump = rq.DumpIR(tmp_path)
    rq.prepare(TinyMLP(), (torch.randn(8, 64),), "A4W4", context=PassContext(instruments=[dump]))
    first = dump.files[0].read_text()
    assert dump.files[0].name == "001_quantize-layers.after.fx.txt"
    assert "quantize → ridge dequant" in first


def test_failing_pass_saves_input_and_replays(
    tmp_path: Path, ir: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_DUMP_DIR", str(tmp_path / "rq-dump"))
    pm = PassManager([Same(), Explode()], verifier=verify)
    with pytest.raises(rq.PassError) as e:
        pm.run(ir, PassContext.from_env())
    msg = str(e.value)
    assert msg.startswith("pass 'test-explode' (2 of 2 in 'test-same,test-explode') failed: ")
    assert isinstance(e.value.__cause__, ValueError)
    saved = tmp_path / "rq-dump" / "002_test-explode.input.mlir"
    assert f"Input IR saved to {saved}" in msg
    replay = re.search(r"Replay: python -m rqcompile (.*)", msg)
    assert replay is not None
    assert replay.group(1) == f"opt --passes test-explode {saved}"
    assert parse_module(saved.read_text()) == ir
    # the replay reproduces the failure (exit 1, typed message) ...
    assert main(replay.group(1).split()) == 1
    assert "PassError: pass 'test-explode' (1 of 1" in capsys.readouterr().err
    # ... and the same file runs through a pass that works
    assert main(["opt", "--passes", "test-same", str(saved)]) == 0
    assert parse_module(capsys.readouterr().out, constants=dict(ir.constants)) == ir


def test_failing_pass_without_dump_dir_uses_a_temp_dir(ir: Any) -> None:
    with pytest.raises(rq.PassError, match=r"Input IR saved to .*rq-dump-.*\.input\.mlir"):
        PassManager([Explode()]).run(ir, PassContext())


def test_fx_failure_names_the_saved_graph(tmp_path: Path) -> None:
    gm = torch.fx.symbolic_trace(TinyMLP())
    with pytest.raises(rq.PassError, match="Input graph saved to .*001_test-explode.input.fx.txt"):
        PassManager([Explode()]).run(gm, PassContext(dump_dir=str(tmp_path)))


def test_pass_context_is_a_with_block_seen_by_every_stage(tmp_path: Path) -> None:
    """``with rq.PassContext(...)``: prepare, convert and build all run under it, and DumpIR
    writes the IR after every lowering pass (convert's and the target's, TVM phases too)."""
    pytest.importorskip("tvm")
    dump = rq.DumpIR(tmp_path)
    timing = rq.Timing()
    with rq.PassContext(instruments=[dump, timing]):
        qat = rq.prepare(TinyMLP(), (torch.randn(8, 64),), "A4W4")
        rq.lower(qat, "llvm")
    names = [f.name.split("_", 1)[1].split(".")[0] for f in dump.files]
    assert names == ["quantize-layers", "quantize-attention", "fold-constants",
                     "eliminate-dead-code", "pad-columns", "fuse-attention", "select-kernels",
                     "fuse-prologue",
                     "pack-weights", "emit", "lift-params", "legalize", "schedule",
                     "schedule-float", "build"]  # fmt: skip
    assert 'rq.kernel = "' in (tmp_path / "007_select-kernels.after.mlir").read_text()
    assert set(timing.seconds) >= {"select-kernels", "build"}
    assert PassContext.current() is not None  # outside the block: a fresh one from the env


def test_disabled_pass_is_skipped_in_build(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    qat = rq.prepare(TinyMLP(), (torch.randn(8, 64),), "A4W4")
    with rq.PassContext(disabled=frozenset({"fuse-prologue", "pack-weights"})):
        exe = rq.lower(qat, "llvm")
    text = rq.inspect(exe)
    assert "(panels)" not in text and "int_matmul." in text
