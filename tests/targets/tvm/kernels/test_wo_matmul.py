"""``rq.wo_matmul`` (weight-only W4/W8): the reference, the translation, and every kernel row.

Every row is forced by name (``select-kernels{force=wo_matmul:<isa>}``), never chosen by the
host: the panel kernels name no instruction (vector types only), so the AVX-512 row's tile
and layout run on an AVX2 host too (LLVM splits each zmm operation in two).
"""

from __future__ import annotations

import pytest
import torch

import rqcompile as rq
from rqcompile.ir import Builder, TensorType, print_module
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.passes.ir import PackWeights, SelectKernels
from rqcompile.quant import reference as R
from rqcompile.quant.bitpack import pack_nibbles

pytest.importorskip("tvm")
from rqcompile.targets.tvm.kernels.table import CPU_KERNELS  # noqa: E402

pytestmark = pytest.mark.tvm

ROWS = [r.isa for r in CPU_KERNELS if r.op == "rq.wo_matmul"]


def _case(m: int, k: int, n: int, *, block: int, w_bits: int, signed: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = ((-8, 7) if signed else (0, 15)) if w_bits <= 4 else (-128, 127)
    codes = torch.randint(lo, hi + 1, (n, k), generator=g)
    ws = torch.rand(n, k // block, generator=g) * 0.1 + 0.01
    wc = torch.randn(n, k // block, generator=g) * 0.2
    wq = pack_nibbles(codes, signed=signed) if w_bits <= 4 else codes.to(torch.int8)
    x = torch.randn(m, k, generator=g)
    return x, codes, wq, ws, wc


def _dequant_matmul(x, codes, ws, wc, block):
    """The float product the op means, written out by hand (float64)."""
    w = codes.double() * ws.double().repeat_interleave(block, 1) + wc.double().repeat_interleave(
        block, 1)
    return (x.double() @ w.T).float()


def _module(x, wq, ws, wc, *, block, w_bits, signed):
    b = Builder()
    xa = b.arg(TensorType(tuple(x.shape), "f32"))
    y = b.op("rq.wo_matmul", xa, b.const("w.wq", wq), b.const("w.ws", ws), b.const("w.wc", wc),
             block=block, w_bits=w_bits, w_signed=signed)
    b.ret(y)
    return b.module()


def _tol(x, codes, ws, wc, block):
    """Float32 rounding of the block sums: a few ulps of Σ|x|·(|ws·q| + |wc|)."""
    mag = _dequant_matmul(x.abs(), codes.abs(), ws, wc.abs(), block).abs().max()
    return float(mag) * 1e-6


def test_reference_is_the_dequantized_float_matmul() -> None:
    x, codes, wq, ws, wc = _case(3, 256, 16, block=64, w_bits=4, signed=False)
    want = _dequant_matmul(x, codes, ws, wc, 64)
    got = R.wo_matmul(x, wq, ws, wc, block=64, w_bits=4, w_signed=False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # the test would notice swapped nibbles, a per-element offset or a transposed scale
    swapped = ((wq >> 4) | (wq << 4)).to(torch.uint8)
    assert (R.wo_matmul(x, swapped, ws, wc, block=64, w_bits=4, w_signed=False) - want).abs().max() > 0.1
    assert (R.wo_matmul(x, wq, ws, ws, block=64, w_bits=4, w_signed=False) - want).abs().max() > 0.1


@pytest.mark.parametrize("preset", ["W4", "W8"])
def test_translation_matches_the_qat_forward(preset: str) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(256, 64)).eval()
    x = torch.randn(2, 3, 256)
    qat = rq.prepare(lin, (x,), preset).eval()
    ir = rq.convert(qat, example_inputs=(x,))
    text = print_module(ir)
    assert '"rq.wo_matmul"' in text and "w_dequant" not in text  # codes, not float weights
    want = qat(x).detach()
    got = rq.build(ir, "reference")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    wq = next(ir.constant(n) for n in ir.constants if n.endswith(".wq"))
    assert wq.numel() == 64 * 256 // (2 if preset == "W4" else 1)  # 4-bit: two codes a byte


# (m, w_bits, signed): GEMV, a row tile that divides M, a full AVX-512 row tile (4 rows, the
# nibbles of a word summed into one accumulator per vector), a prime M, 8-bit and signed codes
_SHAPES = [(1, 4, False), (1, 4, True), (6, 4, True), (4, 4, False), (5, 8, True)]


@pytest.mark.parametrize("isa", ROWS)
@pytest.mark.parametrize("m,w_bits,signed", _SHAPES)
def test_forced_row_matches_the_reference(isa: str, m: int, w_bits: int, signed: bool) -> None:
    block, k, n = 64, 256, 128
    x, codes, wq, ws, wc = _case(m, k, n, block=block, w_bits=w_bits, signed=signed, seed=m)
    ir = _module(x, wq, ws, wc, block=block, w_bits=w_bits, signed=signed)
    forced = PassManager([SelectKernels(force=(f"wo_matmul:{isa}",)), PackWeights()]).run(
        ir, PassContext())
    text = print_module(forced)
    assert f'rq.kernel = "wo_matmul.{isa}"' in text
    assert ('rq.weight_layout = "panels"' in text) == (isa != "generic")
    with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
        exe = rq.build(forced, "llvm")
    want = _dequant_matmul(x, codes, ws, wc, block)
    torch.testing.assert_close(rq.build(ir, "reference")(x), want, rtol=0, atol=1e-5)
    got = exe(x)
    tol = _tol(x, codes, ws, wc, block)
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    # the tolerance is far below what a wrong nibble order or a scale/offset mix-up changes
    if w_bits <= 4:
        swapped = ((wq >> 4) | (wq << 4)).to(torch.uint8)
        bad = R.wo_matmul(x, swapped, ws, wc, block=block, w_bits=w_bits, w_signed=signed)
        assert (bad - want).abs().max() > 100 * tol
    bad = R.wo_matmul(x, wq, wc, ws, block=block, w_bits=w_bits, w_signed=signed)
    assert (bad - want).abs().max() > 100 * tol


def test_panels_need_whole_panels_of_columns() -> None:
    from rqcompile.targets.tvm.x86.wo import wo_panel_supported

    assert wo_panel_supported(n=128, k=256, block=64, w_bits=4, isa="avx512")
    assert not wo_panel_supported(n=96, k=256, block=64, w_bits=4, isa="avx512")  # 64 | N
    assert wo_panel_supported(n=96, k=256, block=64, w_bits=4, isa="avx2")  # 32 | N
    assert not wo_panel_supported(n=96, k=256, block=63, w_bits=4, isa="avx2")


def test_odd_columns_fall_back_to_the_generic_compute() -> None:
    x, codes, wq, ws, wc = _case(2, 128, 24, block=64, w_bits=4, signed=False)
    ir = _module(x, wq, ws, wc, block=64, w_bits=4, signed=False)
    exe = rq.build(ir, "llvm")
    assert "wo_matmul" in print_module(exe.ir) and "panels" not in print_module(exe.ir)
    want = _dequant_matmul(x, codes, ws, wc, 64)
    torch.testing.assert_close(exe(x), want, rtol=0, atol=_tol(x, codes, ws, wc, 64))


@pytest.mark.parametrize("isa", [r for r in ROWS if r != "generic"])
@pytest.mark.parametrize("m,w_bits,signed", [(16, 4, False), (160, 4, True), (24, 8, True),
                                             (18, 4, False), (17, 8, True)])  # fmt: skip
@pytest.mark.parametrize("panel_sets", [False, True])
def test_gemm_walk_gives_the_gemv_walks_bits(isa: str, m: int, w_bits: int, signed: bool,
                                              panel_sets: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # from GEMM_MIN_ROWS rows each block is decoded once per chunk of rows (160 rows: two
    # chunks of 80) and runs as a plain FMA GEMM; same products, same order of the sums.
    # 17 and 18 rows: a last row tile shorter than the others; panel_sets: several column
    # panels per task (as where x outgrows the cache), here 2 (AVX-512) or 4 (AVX2)
    from rqcompile.targets.tvm.x86 import wo

    if panel_sets:
        monkeypatch.setattr(wo, "_GEMM_X_CACHED", 0)

    block, k, n = 64, 256, 128
    x, codes, wq, ws, wc = _case(m, k, n, block=block, w_bits=w_bits, signed=signed, seed=m)
    ir = _module(x, wq, ws, wc, block=block, w_bits=w_bits, signed=signed)
    forced = PassManager([SelectKernels(force=(f"wo_matmul:{isa}",)), PackWeights()]).run(
        ir, PassContext())

    def build() -> torch.Tensor:
        with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
            return rq.build(forced, "llvm")(x)

    assert m >= wo.GEMM_MIN_ROWS
    got = build()
    monkeypatch.setattr(wo, "GEMM_MIN_ROWS", 10**9)  # the GEMV walk for the same call
    assert torch.equal(got, build())
    want = _dequant_matmul(x, codes, ws, wc, block)
    torch.testing.assert_close(got, want, rtol=0, atol=_tol(x, codes, ws, wc, block))
