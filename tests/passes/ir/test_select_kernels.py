"""select-kernels: the kernel table decides, by features or forced; never the host."""

from __future__ import annotations

import re

import pytest
import torch
from ir_pass_helpers import run_pass

import rqcompile as rq
from rqcompile.errors import ConfigError
from rqcompile.ir.printer import print_module
from rqcompile.passes.ir import SelectKernels
from rqcompile.passes.ir.kernel_table import find_row, kernel_table

pytest.importorskip("tvm")
from rqcompile.targets.tvm.kernels.table import CPU_KERNELS  # noqa: E402


def _ir(preset: str, k: int = 256, n: int = 32) -> rq.ir.Module:
    torch.manual_seed(0)
    x = torch.randn(2, k)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(k, n)).eval(), (x,), preset).eval()
    return rq.convert(qat, example_inputs=(x,))


def _kernels(mod: rq.ir.Module) -> dict[str, str]:
    text = print_module(mod)
    return dict(re.findall(r'"(rq\.[a-z0-9_]+)"\(.*rq\.kernel = "([^"]+)"', text))


def test_golden_a8w8_on_avx2() -> None:
    before = _ir("A8W8")
    assert "rq.kernel" not in print_module(before)
    after = run_pass(SelectKernels(features=("avx2",)), before)
    lines = [l.strip() for l in print_module(after).splitlines() if "rq.kernel" in l]
    assert lines == [
        '%1, %2, %3 = "rq.quantize"(%0) {bits = 8 : i64, block = 128 : i64, estimator = '
        '"ridge", pack = "none", ridge_lambda = 0.01 : f64, rq.kernel = "quantize.avx2", '
        "symmetric = false} : (tensor<2x256xf32>) -> (tensor<2x256xi8>, tensor<2x2xf32>, "
        'tensor<2x2xf32>) loc("0")',
        '%8 = "rq.int_matmul"(%1, %2, %3, %4, %5, %6, %7) {block = 128 : i64, rq.kernel = '
        '"int_matmul.avx2", w_bits = 8 : i64, w_signed = true} : (tensor<2x256xi8>, '
        "tensor<2x2xf32>, tensor<2x2xf32>, tensor<32x256xi8>, tensor<32x2xf32>, "
        'tensor<32x2xf32>, tensor<32x2xi32>) -> tensor<2x32xf32> loc("0")',
    ]


@pytest.mark.parametrize(
    ("features", "want"),
    [((), "generic"), (("avx2",), "avx2"), (("avx2", "avx_vnni"), "avx_vnni"),
     (("avx2", "avx512_vnni"), "avx2"),  # the ymm vpdpbusd is EVEX: it needs AVX-512 VL too
     (("avx2", "avx512_vnni", "avx512vl"), "avx512_vnni")],
)  # fmt: skip
def test_features_pick_the_int8_row(features: tuple[str, ...], want: str) -> None:
    got = _kernels(run_pass(SelectKernels(features=features), _ir("A8W8")))
    assert got["rq.int_matmul"] == f"int_matmul.{want}"


@pytest.mark.parametrize(
    ("features", "want"),
    [((), "generic"), (("avx2",), "avx2"), (("avx2", "avx512_vpopcntdq"), "avx512_vpopcntdq")],
)
def test_features_pick_the_xnor_row(features: tuple[str, ...], want: str) -> None:
    got = _kernels(run_pass(SelectKernels(features=features), _ir("A1W1")))
    assert got["rq.xnor_popcount_matmul"] == f"xnor_popcount_matmul.{want}"


@pytest.mark.parametrize("row", [r.name for r in CPU_KERNELS if r.op == "rq.int_matmul"])
def test_every_int8_row_can_be_forced(row: str) -> None:
    isa = row.split(".", 1)[1]
    # the nibble rows (``*_w4``) take 4-bit weight codes only, the 2-bit rows 2-bit ones
    preset = "A4W4" if "_w4" in isa else "A2W2" if "_w2" in isa else "A8W8"
    mod = run_pass(SelectKernels(force=(f"int_matmul:{isa}",)), _ir(preset))
    assert _kernels(mod)["rq.int_matmul"] == row


def test_forcing_an_unknown_isa_lists_the_rows() -> None:
    with pytest.raises(ConfigError, match="no row rq.int_matmul on 'sse9'.*avx2"):
        run_pass(SelectKernels(force=("int_matmul:sse9",)), _ir("A8W8"))


def test_a_row_that_does_not_take_the_op_falls_to_generic() -> None:
    """The AVX2 quantize micro-kernel takes affine formats only: the ternary quantize of
    A1.5W1.5 (symmetric), forced to avx2, gets the row that requires nothing."""
    mod = run_pass(SelectKernels(force=("quantize:avx2",)), _ir("A1.5W1.5"))
    assert _kernels(mod)["rq.quantize"] == "quantize.generic"
    mod = run_pass(SelectKernels(force=("quantize:avx2",)), _ir("A4W4"))
    assert _kernels(mod)["rq.quantize"] == "quantize.avx2"


def test_table_ends_each_op_with_a_row_that_requires_nothing() -> None:
    ops = {r.op for r in kernel_table("llvm")}
    for op in ops:
        rows = [r for r in kernel_table("llvm") if r.op == op]
        assert not rows[-1].requires, op


def test_host_features_never_leak_into_an_explicit_pass() -> None:
    """Same pass options, same IR text, whatever this machine has."""
    a = print_module(run_pass(SelectKernels(features=("avx2",)), _ir("A4W4")))
    b = print_module(run_pass(SelectKernels(features=("avx2",)), _ir("A4W4")))
    assert a == b and "avx512" not in a
