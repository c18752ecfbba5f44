"""Device (GPU-style) kernels run through OpenCL vs the pure-torch reference.

Same schedules, lowering and launcher as CUDA; only the code generator and driver differ.
Integer cores and quantize codes must be bit-exact; fused float epilogues within 1e-5 of
the output's magnitude (float32 here, float64 in the reference).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")
pytest.importorskip("pyopencl", reason="pyopencl not installed: pip install 'rqcompile[opencl]'")

from rqcompile.quant import reference as ref  # noqa: E402  (after the importorskip guard)
from rqcompile.quant.bitpack import pack_nibbles, pack_sparse24, unpack_signs  # noqa: E402
from rqcompile.targets.tvm.device.kernel import device_kernel  # noqa: E402
from rqcompile.targets.tvm.device.opencl import opencl_available  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.adapter import te  # noqa: E402

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(opencl_available() is not None, reason=str(opencl_available())),
]

_TV = {
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.int32: "int32",
    torch.uint32: "uint32",
    torch.float32: "float32",
}


def run(builder: str, args: list[torch.Tensor], **params: Any) -> tuple[torch.Tensor, ...]:
    """Build ``kernels.<builder>`` for OpenCL and run it on ``args``."""
    phs = [te.placeholder(tuple(a.shape), _TV[a.dtype], name=f"a{i}") for i, a in enumerate(args)]
    outs = getattr(K, builder)(*phs, **params)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    func = K.prim_func(
        [*phs, *outs], name="kernel", kernel=builder.removeprefix("te_"), block=params["block"]
    )
    specs = [(tuple(int(d) for d in t.shape), str(t.dtype)) for t in [*phs, *outs]]
    return device_kernel(func, specs, len(args), "opencl")(*args)


def _codes(shape: tuple[int, ...], lo: int, hi: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(torch.int8)


def _words(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**32, shape, generator=g, dtype=torch.int64).to(torch.uint32)


@pytest.mark.parametrize("wfmt", ["s8", "s4"])
def test_int_matmul_core_exact(wfmt: str) -> None:
    xq, wq = _codes((5, 192), -128, 127, 1), _codes((12, 192), -8, 7, 2)
    stored = wq if wfmt == "s8" else pack_nibbles(wq, signed=True)
    (p,) = run(
        "te_int_matmul_core", [xq, stored], block=64, w_bits=8 if wfmt == "s8" else 4
    )
    assert torch.equal(p, ref.int_matmul_core(xq, wq, 64))


def test_xnor_popcount_core_exact() -> None:
    xb, wb = _words((5, 12), 3), _words((8, 12), 4)
    (p,) = run("te_xnor_popcount_core", [xb, wb], block=128)
    assert torch.equal(p, ref.xnor_popcount_core(xb, wb, block=128))
    assert torch.equal(p, ref.int_matmul_core(unpack_signs(xb), unpack_signs(wb), 128))


def test_sparse24_core_exact() -> None:
    g = torch.Generator().manual_seed(5)
    xq = _codes((5, 128), -128, 127, 4)
    dense = torch.randint(-7, 8, (8, 128), generator=g)
    keep = (torch.rand(8, 32, 4, generator=g).argsort(-1) < 2).reshape(8, 128)
    wq = (dense * keep).to(torch.int8)
    vals, idx = pack_sparse24(wq)
    (p,) = run("te_sparse24_core", [xq, vals, idx], block=64)
    assert torch.equal(p, ref.int_matmul_core(xq, wq, 64))


@pytest.mark.parametrize(
    ("bits", "symmetric", "pack"), [(8, False, "none"), (4, False, "none"), (1, False, "bits32")]
)
def test_quantize_codes_exact(bits: float, symmetric: bool, pack: str) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 128, generator=g) * 2 + 0.3
    x[0, :64] = 0.0  # a constant block: the safe path
    codes, scale, offset = run(
        "te_quantize", [x], bits=bits, symmetric=symmetric, block=64, pack=pack
    )
    rc, rs, ro = ref.quantize(x, bits=bits, symmetric=symmetric, block=64, pack=pack)
    assert torch.equal(codes, rc)
    torch.testing.assert_close(scale, rs, rtol=1e-6, atol=1e-6 * float(rs.abs().max()))
    torch.testing.assert_close(offset, ro, rtol=1e-6, atol=1e-6 * float(x.abs().max()))


def _assert_rel(out: torch.Tensor, expect: torch.Tensor, tol: float = 1e-5) -> None:
    err = (out.double() - expect.double()).abs().max().item()
    assert err <= tol * expect.double().abs().max().item(), err


def test_int_matmul_fused() -> None:
    g = torch.Generator().manual_seed(8)
    x, w = torch.randn(5, 192, generator=g) + 0.5, torch.randn(12, 192, generator=g)
    xq, xs, xc = ref.quantize(x, bits=4, symmetric=False, block=64)
    wq, ws, wc = ref.quantize(w, bits=4, symmetric=True, block=64)
    args = [xq, xs, xc, pack_nibbles(wq, signed=True), ws, wc, ref.code_sums(wq, 64)]
    (y,) = run("te_int_matmul", args, block=64, w_bits=4, w_signed=True)
    _assert_rel(y, ref.int_matmul(*args, block=64, w_bits=4, w_signed=True))


def test_xnor_popcount_matmul_fused() -> None:
    g = torch.Generator().manual_seed(9)
    x, w = torch.randn(4, 128, generator=g), torch.randn(8, 128, generator=g)
    xb, xs, xc = ref.quantize(x, bits=1, symmetric=False, block=64, pack="bits32")
    wb, ws, wc = ref.quantize(w, bits=1, symmetric=False, block=64, pack="bits32")
    args = [xb, xs, xc, wb, ws, wc, ref.code_sums(unpack_signs(wb), 64)]
    (y,) = run("te_xnor_popcount_matmul", args, block=64, k=128)
    _assert_rel(y, ref.xnor_popcount_matmul(*args, block=64, k=128))
