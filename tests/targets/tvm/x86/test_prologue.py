"""The fused GELU / layer-norm → quantize kernels (x86.prologue) vs pure torch.

For each case the kernel also returns the floats it quantized (``float_out``): the codes are
bit-exact against ``reference.quantize`` of those floats, scale/offset within 1e-6 (as the
plain quantize micro-kernel), and the floats are checked against torch's op (GELU: the
``fast_erf`` error; layer norm: float32 reassociation). The GELU floats are also identical
to the unfused relax GELU's (``fast_math.te_fast_gelu``), so fused and unfused builds agree.
Shapes: rows odd and not a multiple of the two rows per parallel iteration, leading dims,
blocks 32..256 (256: the scratch no longer fits a stack buffer), 1-bit and 2-8-bit codes,
ridge and STE.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F

tvm = pytest.importorskip("tvm")

from rqcompile.errors import NumericsError  # noqa: E402  (after the importorskip guard)
from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.targets.tvm.adapter import host_llvm_target, te  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.kernels.fast_math import te_fast_gelu  # noqa: E402
from rqcompile.targets.tvm.x86.prologue import (  # noqa: E402
    prologue_quantize_supported,
    te_prologue_quantize,
)

pytestmark = pytest.mark.tvm

_DTYPES = {"uint32": torch.uint32, "int8": torch.int8, "float32": torch.float32}


@pytest.fixture(autouse=True)
def _need_avx2() -> None:
    if "avx2" not in host_features():
        pytest.skip("host has no AVX2")


def _pack(bits: int) -> str:
    return "bits32" if bits == 1 else "none"


@functools.cache
def _build(prologue: str, shape: tuple[int, ...], nparams: int, block: int, bits: int,
           estimator: str) -> tuple[Any, list[tuple[tuple[int, ...], str]]]:  # fmt: skip
    k = shape[-1]
    x = te.placeholder(shape, "float32", name="x")
    ps = [te.placeholder((k,), "float32", name=f"p{i}") for i in range(nparams)]
    outs = te_prologue_quantize(x, ps, prologue=prologue, bits=bits, block=block,
                                estimator=estimator, pack=_pack(bits), float_out=True)  # fmt: skip
    func = te.create_prim_func([x, *ps, *outs])
    specs = [(tuple(int(d) for d in o.shape), str(o.dtype)) for o in outs]
    return tvm.compile(func, target=host_llvm_target()), specs


def _run(prologue: str, x: torch.Tensor, params: list[torch.Tensor], block: int, bits: int,
         estimator: str) -> list[torch.Tensor]:  # fmt: skip
    fn, specs = _build(prologue, tuple(x.shape), len(params), block, bits, estimator)
    outs = [torch.empty(s, dtype=_DTYPES[d]) for s, d in specs]
    fn(x.contiguous(), *params, *outs)
    return outs


def _check_codes(outs: list[torch.Tensor], block: int, bits: int, estimator: str) -> None:
    codes, scale, offset, y = outs
    rc, rs, ro = ref.quantize(y, bits=bits, symmetric=False, block=block, estimator=estimator,
                              ridge_lambda=0.01, pack=_pack(bits))  # fmt: skip
    differ = int((codes != rc).sum())
    assert differ == 0, f"{differ} of {rc.numel()} codes differ"
    torch.testing.assert_close(scale, rs, rtol=1e-6, atol=1e-6 * float(rs.abs().max()))
    torch.testing.assert_close(offset, ro, rtol=1e-6, atol=1e-6 * float(y.abs().max()))




GELU_CASES = [  # (shape, block, bits, estimator, bias)
    ((37, 512), 128, 1, "ridge", True),
    ((4, 7, 96), 32, 1, "ste", False),
    ((5, 256), 256, 1, "ridge", True),
    ((9, 64), 64, 1, "ridge", False),
    ((11, 96), 48, 2, "ridge", True),
    ((6, 128), 16, 4, "ste", True),
    ((3, 5, 256), 64, 8, "ridge", True),
    ((1, 128), 128, 3, "ridge", False),
]


@pytest.mark.parametrize(("shape", "block", "bits", "estimator", "bias"), GELU_CASES)
def test_gelu_quantize(shape: tuple[int, ...], block: int, bits: int, estimator: str,
                       bias: bool, request: pytest.FixtureRequest) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(block + bits + shape[0])
    x = torch.randn(*shape, generator=g) * 2.5
    x.view(-1)[:3] = torch.tensor([0.0, 5.0, -6.0])  # clamp of fast_erf, exact zero
    params = [torch.randn(shape[-1], generator=g)] if bias else []
    outs = _run("gelu", x, params, block, bits, estimator)
    want = F.gelu((x + params[0] if bias else x).double())
    # fast_erf: ~4e-7 absolute on erf, so |x|·2e-7 on GELU, plus float32 rounding
    err = (outs[3].double() - want).abs() - 1e-6 * want.abs().clamp_min(1.0)
    assert float(err.max()) <= 0, f"GELU off by {float(err.max())} beyond tolerance"
    _check_codes(outs, block, bits, estimator)


def test_gelu_floats_match_unfused_gelu() -> None:
    """The fused GELU computes te_fast_gelu's floats exactly (same operations, same order)."""
    shape = (33, 128)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 3
    xt = te.placeholder(shape, "float32", name="x")
    unfused = tvm.compile(te.create_prim_func([xt, te_fast_gelu(xt)]), target=host_llvm_target())
    want = torch.empty(shape)
    unfused(x, want)
    got = _run("gelu", x, [], 32, 1, "ridge")[3]
    assert torch.equal(got, want)


LN_CASES = [  # (shape, block, bits, estimator)
    ((33, 128), 128, 1, "ridge"),
    ((2, 5, 64), 32, 1, "ste"),
    ((7, 256), 64, 1, "ridge"),
    ((5, 64), 16, 4, "ridge"),
    ((9, 96), 32, 8, "ste"),
    ((3, 512), 256, 2, "ridge"),
]


@pytest.mark.parametrize(("shape", "block", "bits", "estimator"), LN_CASES)
def test_layer_norm_quantize(shape: tuple[int, ...], block: int, bits: int,
                             estimator: str) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(block * bits)
    k = shape[-1]
    x = torch.randn(*shape, generator=g) * 3 + 1.5  # a mean far from 0
    gamma, beta = torch.randn(k, generator=g), torch.randn(k, generator=g)
    outs = _run("layer_norm", x, [gamma, beta], block, bits, estimator)
    want = F.layer_norm(x.double(), (k,), gamma.double(), beta.double(), 1e-5)
    torch.testing.assert_close(outs[3].double(), want, rtol=1e-5, atol=2e-6)
    _check_codes(outs, block, bits, estimator)


def test_layer_norm_constant_row() -> None:
    """A constant row has variance 0: the output is β (rstd = 1/sqrt(eps), times 0)."""
    x = torch.full((3, 64), 0.7)
    gamma, beta = torch.ones(64), torch.linspace(-1, 1, 64)
    outs = _run("layer_norm", x, [gamma, beta], 32, 1, "ridge")
    torch.testing.assert_close(outs[3], beta.expand(3, 64), rtol=0, atol=1e-6)
    _check_codes(outs, 32, 1, "ridge")


def test_supported_formats() -> None:
    ok = functools.partial(prologue_quantize_supported, symmetric=False, k=128, pack="bits32")
    assert ok(prologue="gelu", bits=1, block=128, estimator="ridge")
    assert ok(prologue="layer_norm", bits=1, block=32, estimator="ste")
    assert not ok(prologue="relu", bits=1, block=128, estimator="ridge")
    # the {0, 1}-code min/max grid (gdnsq's at 1 bit; ridge_minmax) shares the micro-kernel
    assert ok(prologue="gelu", bits=1, block=128, estimator="gdnsq")
    assert ok(prologue="layer_norm", bits=1, block=64, estimator="ridge_minmax")
    assert not ok(prologue="gelu", bits=1, block=48, estimator="ridge")  # not whole words
    assert not prologue_quantize_supported(prologue="gelu", bits=4, symmetric=True, block=16,
                                           k=128, estimator="ridge", pack="none")  # fmt: skip


def test_rejects_bad_requests() -> None:
    x = te.placeholder((4, 128), "float32", name="x")
    with pytest.raises(NumericsError, match="no fused 'gelu' quantize"):
        te_prologue_quantize(x, [], prologue="gelu", bits=1, block=128, estimator="ridge",
                             pack="none")  # fmt: skip
    with pytest.raises(NumericsError, match="layer_norm takes 2"):
        te_prologue_quantize(x, [te.placeholder((128,), "float32", name="g")],
                             prologue="layer_norm", bits=1, block=128, pack="bits32")  # fmt: skip
    with pytest.raises(NumericsError, match=r"shape \[128\]"):
        te_prologue_quantize(x, [te.placeholder((64,), "float32", name="b")], prologue="gelu",
                             bits=1, block=128, pack="bits32")  # fmt: skip


@functools.cache
def _build_residual(shape: tuple[int, ...], biased: bool, h_out: bool, block: int, bits: int,
                    estimator: str) -> Any:  # fmt: skip
    k = shape[-1]
    x, r = (te.placeholder(shape, "float32", name=n) for n in ("x", "r"))
    residual = [r, te.placeholder((k,), "float32", name="bias")] if biased else [r]
    ps = [te.placeholder((k,), "float32", name=f"p{i}") for i in range(2)]
    outs = te_prologue_quantize(x, ps, prologue="layer_norm", bits=bits, block=block,
                                estimator=estimator, pack=_pack(bits), residual=residual,
                                h_out=h_out, float_out=True)  # fmt: skip
    return tvm.compile(te.create_prim_func([x, *residual, *ps, *outs]), target=host_llvm_target())


@pytest.mark.parametrize(("shape", "biased", "h_out", "block", "bits", "estimator"), [
    ((2, 9, 128), True, True, 128, 1, "ridge"),
    ((7, 64), False, True, 32, 1, "ste"),
    ((5, 96), True, False, 48, 4, "ridge"),
    ((3, 256), False, False, 256, 8, "ste"),
])  # fmt: skip
def test_residual_layer_norm_quantize(shape: tuple[int, ...], biased: bool, h_out: bool,
                                      block: int, bits: int, estimator: str) -> None:  # fmt: skip
    """layer_norm(x + r) / layer_norm(x + (y + bias)): h written exactly as the unfused adds
    compute it (same order), the layer norm of h within float tolerance, codes bit-exact."""
    g = torch.Generator().manual_seed(bits * block)
    k = shape[-1]
    x, r = torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g)
    bias = torch.randn(k, generator=g)
    gamma, beta = torch.randn(k, generator=g), torch.randn(k, generator=g)
    h = x + (r + bias) if biased else x + r
    fn = _build_residual(shape, biased, h_out, block, bits, estimator)
    codes = torch.empty(*shape[:-1], k // 32, dtype=torch.uint32) if bits == 1 else (
        torch.empty(*shape, dtype=torch.int8))  # fmt: skip
    outs = [codes, torch.empty(*shape[:-1], k // block), torch.empty(*shape[:-1], k // block)]
    extra = [torch.empty(*shape) for _ in range(1 + int(h_out))]
    fn(x, r, *([bias] if biased else []), gamma, beta, *outs, *extra)
    if h_out:
        assert torch.equal(extra[0], h)
    y = extra[-1]
    want = F.layer_norm(h.double(), (k,), gamma.double(), beta.double(), 1e-5)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=2e-6)
    _check_codes([*outs, y], block, bits, estimator)


def test_rejects_bad_residual() -> None:
    x = te.placeholder((4, 128), "float32", name="x")
    ps = [te.placeholder((128,), "float32", name=n) for n in ("g", "b")]
    with pytest.raises(NumericsError, match="residual"):
        te_prologue_quantize(x, ps, prologue="layer_norm", bits=1, block=128, pack="bits32",
                             residual=[te.placeholder((2, 128), "float32", name="r")])  # fmt: skip
    with pytest.raises(NumericsError, match="h_out needs a residual"):
        te_prologue_quantize(x, ps, prologue="layer_norm", bits=1, block=128, pack="bits32",
                             h_out=True)  # fmt: skip
