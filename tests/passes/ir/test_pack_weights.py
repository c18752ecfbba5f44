"""pack-weights: the layout the kernel row offers, where the op's shapes take it."""

from __future__ import annotations

import re

import pytest
import torch
from ir_pass_helpers import run_pass

import rqcompile as rq
from rqcompile.errors import PassError
from rqcompile.ir.printer import print_module
from rqcompile.passes.ir import PackWeights, SelectKernels

pytest.importorskip("tvm")
import rqcompile.targets.tvm.kernels.table  # noqa: E402,F401  (registers the llvm table)


def _ir(preset: str, n: int = 32) -> rq.ir.Module:
    torch.manual_seed(0)
    x = torch.randn(2, 256)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(256, n)).eval(), (x,), preset).eval()
    return rq.convert(qat, example_inputs=(x,))


def _layout_line(mod: rq.ir.Module) -> str:
    (line,) = [l for l in print_module(mod).splitlines() if "rq.int_matmul" in l]
    return re.sub(r" : \(.*", "", line.strip())


def test_golden_a4w4_avx2_nibble_panels_at_small_m() -> None:
    """A4W4 at M = 2 on an AVX2 host: the nibble row (codes two per byte, ``panels4``)."""
    mod = run_pass(SelectKernels(features=("avx2",)), _ir("A4W4"))
    assert _layout_line(mod) == ('%8 = "rq.int_matmul"(%1, %2, %3, %4, %5, %6, %7) {block = '
                                 '128 : i64, rq.kernel = "int_matmul.avx2_w4", w_bits = 4 : i64, '
                                 "w_signed = false}")  # fmt: skip
    after = run_pass(PackWeights(), mod)
    assert _layout_line(after) == (
        '%8 = "rq.int_matmul"(%1, %2, %3, %4, %5, %6, %7) {block = 128 : i64, rq.kernel = '
        '"int_matmul.avx2_w4", rq.weight_layout = "panels4", w_bits = 4 : i64, w_signed = false}'
    )


def test_golden_a4w4_avx2_panels_with_the_code_range() -> None:
    """Forced to the byte-per-code AVX2 row, the panels carry the activation code range."""
    mod = run_pass(SelectKernels(force=("int_matmul:avx2",)), _ir("A4W4"))
    after = run_pass(PackWeights(), mod)
    assert _layout_line(after) == (
        '%8 = "rq.int_matmul"(%1, %2, %3, %4, %5, %6, %7) {block = 128 : i64, rq.kernel = '
        '"int_matmul.avx2", rq.weight_layout = "panels", rq.x_range = [0 : i64, 15 : i64], '
        "w_bits = 4 : i64, w_signed = false}"
    )


def test_generic_rows_keep_the_plain_layout() -> None:
    mod = run_pass(PackWeights(), run_pass(SelectKernels(features=()), _ir("A4W4")))
    assert "rq.weight_layout" not in print_module(mod)


def test_shapes_the_panels_do_not_take_stay_plain() -> None:
    """The panel kernels want N % 8 == 0: N = 12 keeps the plain layout."""
    mod = run_pass(PackWeights(), run_pass(SelectKernels(features=("avx2",)), _ir("A4W4", 12)))
    assert "rq.weight_layout" not in print_module(mod)


def test_without_select_kernels_it_says_what_to_run_first() -> None:
    with pytest.raises(PassError, match="run select-kernels first"):
        run_pass(PackWeights(), _ir("A4W4"))
