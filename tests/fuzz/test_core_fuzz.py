"""Fuzzed integer cores: each fused integer kernel, built by ``rq.build(..., "llvm")``, is
bit-exact against the reference integer core on random shapes and random (or saturated) codes.

The fused ops are called with unit scales and zero offsets, so their float output is exactly
``Σ_b P_b`` (every partial sum is an integer below 2**24, exact in float32): any difference
is an integer-core difference, not rounding. Shapes include batch 1, a single output
channel, one or several blocks, and blocks of 4 to 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rqcompile as rq
from rqcompile.ir.builder import Builder
from rqcompile.ir.core import Module
from rqcompile.ir.types import TensorType
from rqcompile.quant import reference as R
from rqcompile.quant.bitpack import pack_nibbles, pack_signs, pack_sparse24

pytestmark = pytest.mark.tvm

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
WFMT = {"s8": (-128, 127), "s4": (-8, 7), "u4": (0, 15), "sign": (-1, 1), "s24": (-8, 7)}


@dataclass(frozen=True)
class Core:
    kernel: str  # int_matmul (s8/s4/u4) | xnor_popcount_matmul (sign) | sparse24_matmul (s24)
    wfmt: str
    m: int
    n: int
    block: int
    nb: int
    saturate: bool  # every code at its extreme: the largest |P| the format allows
    seed: int

    @property
    def k(self) -> int:
        return self.block * self.nb


@st.composite
def cores(draw: st.DrawFn) -> Core:
    wfmt = draw(st.sampled_from(list(WFMT)))
    kernel = {"sign": "xnor_popcount_matmul", "s24": "sparse24_matmul"}.get(wfmt, "int_matmul")
    if kernel == "xnor_popcount_matmul":
        block = draw(st.sampled_from([32, 64, 128]))
    else:
        block = draw(st.sampled_from([4, 8, 12, 16, 32, 64, 128]))
    nb = draw(st.integers(1, 3))
    if kernel == "sparse24_matmul" and (block * nb) % 8:
        nb *= 2
    return Core(
        kernel,
        wfmt,
        m=draw(st.integers(1, 6)),
        n=draw(st.integers(1, 12)),
        block=block,
        nb=nb,
        saturate=draw(st.integers(0, 4)) == 0,
        seed=draw(st.integers(0, 2**16)),
    )


def _codes(c: Core, shape: tuple[int, ...], lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    if c.saturate:
        return torch.full(shape, lo if lo < 0 else hi, dtype=torch.int8)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)


def module_for(c: Core) -> tuple[Module, torch.Tensor, torch.Tensor]:
    """IR computing Σ_b P_b with the fused kernel; returns (module, its input, the exact core)."""
    g = torch.Generator().manual_seed(c.seed)
    lo, hi = WFMT[c.wfmt]
    if c.kernel == "xnor_popcount_matmul":
        xcodes = _codes(c, (c.m, c.k), -1, 1, g).sign()
        xcodes[xcodes == 0] = 1
        wcodes = _codes(c, (c.n, c.k), -1, 1, g).sign()
        wcodes[wcodes == 0] = 1
        x = pack_signs(xcodes)
    else:
        xcodes = _codes(c, (c.m, c.k), -128, 127, g)
        wcodes = _codes(c, (c.n, c.k), lo, hi, g)
        x = xcodes
    if c.kernel == "sparse24_matmul":
        keep = torch.rand(c.n, c.k // 4, 4, generator=g).argsort(-1) < 2
        wcodes = (wcodes.reshape(c.n, c.k // 4, 4) * keep).reshape(c.n, c.k)
    b = Builder()
    xq = b.arg(TensorType.of(x))
    ones = torch.ones(c.m, c.nb)
    xs, xc = b.const("xs", ones), b.const("xc", torch.zeros(c.m, c.nb))
    ws, wc = b.const("ws", torch.ones(c.n, c.nb)), b.const("wc", torch.zeros(c.n, c.nb))
    wsum = b.const("wsum", R.code_sums(wcodes, c.block))
    if c.kernel == "int_matmul":
        nib = c.wfmt in ("s4", "u4")
        stored = pack_nibbles(wcodes, signed=c.wfmt == "s4") if nib else wcodes
        wq = b.const("wq", stored, dtype="ui8" if nib else "i8")
        y = b.op(
            "rq.int_matmul", xq, xs, xc, wq, ws, wc, wsum,
            block=c.block, w_bits=4 if nib else 8, w_signed=c.wfmt != "u4",
        )  # fmt: skip
    elif c.kernel == "xnor_popcount_matmul":
        wb = b.const("wbits", pack_signs(wcodes))
        y = b.op("rq.xnor_popcount_matmul", xq, xs, xc, wb, ws, wc, wsum, block=c.block, k=c.k)
    else:
        vals, idx = pack_sparse24(wcodes)
        wv, wi = b.const("wvals", vals), b.const("widx", idx)
        y = b.op("rq.sparse24_matmul", xq, xs, xc, wv, wi, ws, wc, wsum, block=c.block, w_bits=4)
    b.ret(y)
    core = R.int_matmul_core(xcodes, wcodes, c.block).to(torch.int64).sum(-1)
    return b.module(), x, core


def check_core(c: Core) -> None:
    irm, x, core = module_for(c)
    assert core.abs().max() < 2**24  # the float output represents it exactly
    want = rq.build(irm, "reference")(x)
    got = rq.build(irm, "llvm")(x)
    assert torch.equal(want, core.float()), f"reference epilogue is not exact for {c}"
    assert torch.equal(got, want), (
        f"llvm integer core differs for {c}: {int((got != want).sum())} element(s), "
        f"max |Δ| {float((got - want).abs().max())}"
    )


SAT_S8 = Core("int_matmul", "s8", m=1, n=1, block=128, nb=3, saturate=True, seed=0)


@settings(settings(**_COMMON, derandomize=True), max_examples=1)
@given(c=cores())
@example(c=SAT_S8)
@example(c=Core("xnor_popcount_matmul", "sign", m=3, n=5, block=32, nb=2, saturate=False, seed=1))
@example(c=Core("sparse24_matmul", "s24", m=2, n=3, block=4, nb=2, saturate=False, seed=2))
def test_integer_cores_bit_exact(c: Core) -> None:
    check_core(c)


@pytest.mark.slow
@settings(settings(**_COMMON), max_examples=60)
@given(c=cores())
def test_integer_cores_bit_exact_many(c: Core) -> None:
    check_core(c)
