"""fuse-prologue: layer norm → quantize chains, only where the quantize kernel fuses them."""

from __future__ import annotations

import re

import pytest
import torch
from ir_pass_helpers import run_pass

import rqcompile as rq
from rqcompile.demo.models import CharTransformer
from rqcompile.ir.printer import print_module
from rqcompile.passes.ir import FusePrologue, SelectKernels

pytest.importorskip("tvm")
import rqcompile.targets.tvm.kernels.table  # noqa: E402,F401  (registers the llvm table)


def _ir() -> rq.ir.Module:
    torch.manual_seed(0)
    model, ex = CharTransformer(65), (torch.zeros(2, 64, dtype=torch.long),)
    return rq.convert(rq.prepare(model, ex, "A4W4").eval())


def _marked(mod: rq.ir.Module) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, gid in re.findall(r'"(rq\.[a-z_0-9]+)".*rq\.fused = \["prologue", (\d+)',
                                print_module(mod)):  # fmt: skip
        out.setdefault(gid, []).append(name)
    return out


def test_layer_norm_chains_on_the_avx2_quantize() -> None:
    mod = run_pass(SelectKernels(features=("avx2",)), _ir())
    after = run_pass(FusePrologue(ops=("layer_norm",)), mod)
    chains = _marked(after)
    assert chains, "no chain marked"
    for ops in chains.values():
        assert "rq.layer_norm" in ops and "rq.quantize" in ops


def test_gelu_chains_only_when_asked() -> None:
    mod = run_pass(SelectKernels(features=("avx2",)), _ir())
    ln = _marked(run_pass(FusePrologue(ops=("layer_norm",)), mod))
    both = _marked(run_pass(FusePrologue(ops=("layer_norm", "gelu")), mod))
    assert len(both) > len(ln)
    assert any("rq.gelu" in ops for ops in both.values())


def test_generic_quantize_takes_no_prologue() -> None:
    mod = run_pass(SelectKernels(features=()), _ir())
    assert not FusePrologue().run(mod, None).changed
