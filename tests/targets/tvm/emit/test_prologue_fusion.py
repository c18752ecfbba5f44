"""Fused quantize prologues: the matcher (passes/ir/patterns/prologue.py) and the built model.

The matcher takes ``[bias add →] gelu → quantize`` and ``[residual add →] layer_norm →
quantize`` through last-dim-preserving reshapes and nothing else (a second use, tanh GELU,
a symmetric
quantizer, a reshape that changes the row length, a full-shape add stay unfused). Built
for llvm: the GELU chains give exactly the unfused build's outputs (same floats), and every
chain agrees with the reference target (torch) within the float tolerance: scale/offset
1e-5, codes identical except where torch's exact erf / layer norm moves a value across a
rounding tie (none here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402
from rqcompile.ir import Builder, Module, TensorType  # noqa: E402
from rqcompile.ir.core import Value  # noqa: E402
from rqcompile.targets.tvm.emit import module as emit  # noqa: E402
from rqcompile.targets.tvm import lowering as P  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.passes.ir.patterns.prologue import find_prologues as _find  # noqa: E402
from rqcompile.passes.ir.kernel_table import find_row  # noqa: E402


def find_prologues(func):  # type: ignore[no-untyped-def]
    """The chains whose quantize the AVX2 micro-kernel takes (what fuse-prologue fuses)."""
    return _find(func, find_row("llvm", "quantize.avx2").supported)
from rqcompile.testing.ir_cases import one_module  # noqa: E402

pytestmark = pytest.mark.tvm

Make = Callable[[Builder, torch.Generator], tuple[list[torch.Tensor], list[Value]]]
_ALL = ("gelu", "layer_norm")  # every fusable op (PROLOGUE_OPS leaves gelu out by default)
_Q1 = {"bits": 1, "symmetric": False, "block": 128, "estimator": "ridge", "pack": "bits32",
       "ridge_lambda": 0.01}


def _arg(b: Builder, t: torch.Tensor, ins: list[torch.Tensor]) -> Value:
    ins.append(t)
    return b.arg(TensorType.of(t))


def _quantize(b: Builder, x: Value, **kw: Any) -> list[Value]:
    return list(b.op("rq.quantize", x, **{**_Q1, **kw}))  # type: ignore[arg-type]


def _mlp(*, bias: bool = True, approximate: str = "none", tag: str = "mlp",
         extra_use: bool = False, q: dict[str, Any] | None = None) -> Make:  # fmt: skip
    """fc output [B·T, 4C] → bias → [B, T, 4C] → gelu → [B·T, 4C] → quantize."""

    def make(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
        ins: list[torch.Tensor] = []
        y = _arg(b, torch.randn(2 * 13, 256, generator=gen) * 2, ins)
        if bias:
            y = b.op("rq.add", y, b.const(f"{tag}.bias", torch.randn(256, generator=gen)))
        h = b.op("rq.reshape", y, shape=(2, 13, 256))
        g = b.op("rq.gelu", h, approximate=approximate)
        flat = b.op("rq.reshape", g, shape=(26, 256))
        outs = _quantize(b, flat, **(q or {}))
        return ins, [*outs, g] if extra_use else outs

    return make


def _ln(*, extra_use: bool = False, tag: str = "ln", q: dict[str, Any] | None = None) -> Make:
    """residual stream [B, T, C] → layer_norm → [B·T, C] → quantize."""

    def make(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
        ins: list[torch.Tensor] = []
        x = _arg(b, torch.randn(3, 11, 128, generator=gen) * 2 + 0.5, ins)
        w = b.const(f"{tag}.w", torch.randn(128, generator=gen))
        bb = b.const(f"{tag}.b", torch.randn(128, generator=gen))
        y = b.op("rq.layer_norm", x, w, bb, eps=1e-5)
        outs = _quantize(b, b.op("rq.reshape", y, shape=(33, 128)), **(q or {}))
        return ins, [*outs, y] if extra_use else outs

    return make


def _block(*, biased: bool = True, late_use: bool = True, tag: str = "blk") -> Make:
    """A pre-norm block's second half: ``h = x + (y + bias)`` (or ``x + y``) → layer_norm →
    quantize, and ``h`` used again by the next residual add (after the quantize: the kernel
    writes ``h``; before it, with ``late_use=False``: the add stays outside)."""

    def make(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
        ins: list[torch.Tensor] = []
        x = _arg(b, torch.randn(2, 13, 128, generator=gen), ins)
        y = _arg(b, torch.randn(26, 128, generator=gen), ins)
        if biased:
            y = b.op("rq.add", y, b.const(f"{tag}.bias", torch.randn(128, generator=gen)))
        h = b.op("rq.add", x, b.op("rq.reshape", y, shape=(2, 13, 128)))
        early = b.op("rq.mul_scalar", h, value=2.0) if not late_use else None
        w = b.const(f"{tag}.w", torch.randn(128, generator=gen))
        bb = b.const(f"{tag}.b", torch.randn(128, generator=gen))
        ln = b.op("rq.layer_norm", h, w, bb, eps=1e-5)
        outs = _quantize(b, b.op("rq.reshape", ln, shape=(26, 128)))
        nxt = b.op("rq.add", h, early if early is not None else h)
        return ins, [*outs, nxt]

    return make


def _residual_gelu(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
    """gelu(a + c), both full shape: the add is no bias, so it stays outside the kernel."""
    ins: list[torch.Tensor] = []
    a = _arg(b, torch.randn(8, 256, generator=gen), ins)
    c = _arg(b, torch.randn(8, 256, generator=gen), ins)
    g = b.op("rq.gelu", b.op("rq.add", a, c), approximate="none")
    return ins, _quantize(b, g)


def _regrouped(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
    """A reshape that changes the row length between gelu and quantize."""
    ins: list[torch.Tensor] = []
    y = _arg(b, torch.randn(4, 256, generator=gen), ins)
    g = b.op("rq.reshape", b.op("rq.gelu", y, approximate="none"), shape=(8, 128))
    return ins, _quantize(b, g)


def _relu(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
    ins: list[torch.Tensor] = []
    y = _arg(b, torch.randn(4, 128, generator=gen), ins)
    return ins, _quantize(b, b.op("rq.relu", y))


_Q4_STE = {"bits": 4, "pack": "none", "estimator": "ste", "block": 64}
_Q4_SYM = {"bits": 4, "symmetric": True, "pack": "none"}

#: name -> (model, chains expected, prologue, number of kernel inputs)
CASES: dict[str, tuple[Make, int, str | None, int]] = {
    "mlp": (_mlp(), 1, "gelu", 2),
    "mlp-no-bias": (_mlp(bias=False, tag="nb"), 1, "gelu", 1),
    "mlp-8bit": (_mlp(tag="q8", q={"bits": 8, "pack": "none", "block": 32}), 1, "gelu", 2),
    "mlp-ste-4bit": (_mlp(tag="q4", q=_Q4_STE), 1, "gelu", 2),
    "ln": (_ln(), 1, "layer_norm", 3),
    "ln-block32": (_ln(tag="ln32", q={"block": 32, "estimator": "ste"}), 1, "layer_norm", 3),
    "residual-gelu": (_residual_gelu, 1, "gelu", 1),
    "block-biased": (_block(), 1, "layer_norm", 5),
    "block-plain": (_block(biased=False, tag="bp"), 1, "layer_norm", 4),
    "block-early-use": (_block(late_use=False, tag="be"), 1, "layer_norm", 3),
    # not fused
    "mlp-gelu-reused": (_mlp(tag="ru", extra_use=True), 0, None, 0),
    "mlp-tanh": (_mlp(tag="th", approximate="tanh"), 0, None, 0),
    "mlp-symmetric": (_mlp(tag="sy", q=_Q4_SYM), 0, None, 0),
    "ln-reused": (_ln(tag="lr", extra_use=True), 0, None, 0),
    "regrouped": (_regrouped, 0, None, 0),
    "relu": (_relu, 0, None, 0),
}


def _module(make: Make, seed: int = 0) -> tuple[Module, list[torch.Tensor]]:
    b = Builder()
    ins, outs = make(b, torch.Generator().manual_seed(seed))
    b.ret(*outs)
    return b.module(), ins


@pytest.mark.parametrize("case", list(CASES))
def test_chains(case: str) -> None:
    make, want, prologue, n_inputs = CASES[case]
    m, _ = _module(make)
    chains = find_prologues(m.main)
    assert len(chains) == want
    if want:
        (c,) = chains
        assert c.prologue == prologue and len(c.inputs) == n_inputs
        assert m.main.ops[c.anchor].name == "rq.quantize"
    opts = {"quantize": {"isa": "avx2"}, "prologue_quantize": {"ops": _ALL}}
    fused = emit.emit_module(m, options=opts)
    names = [gv.name_hint for gv in fused.functions if gv.name_hint.startswith("prologue")]
    assert len(names) == want


def test_residual_add_stays_outside() -> None:
    m, _ = _module(_residual_gelu)
    (c,) = find_prologues(m.main)
    assert not any(m.main.ops[i].name == "rq.add" for i in c.ops)


def test_block_chain_writes_h() -> None:
    m, _ = _module(_block())
    (c,) = find_prologues(m.main)
    assert c.residual == 2 and c.h is not None
    names = sorted(m.main.ops[i].name for i in c.ops)
    assert names == ["rq.add", "rq.add", "rq.layer_norm", "rq.quantize", "rq.reshape",
                     "rq.reshape"]  # fmt: skip
    (early,) = find_prologues(_module(_block(late_use=False, tag="be"))[0].main)
    assert early.residual == 0 and early.h is None


def test_no_fusion_without_the_option_or_avx2_quantize() -> None:
    m, _ = _module(_mlp())
    avx2, generic = {"isa": "avx2"}, {"isa": "generic"}
    for opts in ({"quantize": avx2},
                 {"quantize": generic, "prologue_quantize": {"ops": ("gelu",)}},
                 {"quantize": avx2, "prologue_quantize": {"ops": ("layer_norm",)}}):  # fmt: skip
        fused = emit.emit_module(m, options=opts)
        assert not [gv for gv in fused.functions if gv.name_hint.startswith("prologue")]


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """Every case in one module, built for llvm with and without the fusion and for the
    reference target; split per case."""
    if "avx2" not in host_features():
        pytest.skip("host has no AVX2")
    m, inputs, spans = one_module({name: make for name, (make, *_) in CASES.items()})
    saved = P.PROLOGUE_OPS
    try:
        P.PROLOGUE_OPS = _ALL
        fused = rq.build(m, "llvm")(*inputs)
        P.PROLOGUE_OPS = ()
        unfused = rq.build(m, "llvm")(*inputs)
    finally:
        P.PROLOGUE_OPS = saved
    want = rq.build(m, "reference")(*inputs)
    return {n: (fused[lo:hi], unfused[lo:hi], want[lo:hi]) for n, (lo, hi) in spans.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_built_matches(case: str, built: dict[str, Any]) -> None:
    fused, unfused, want = built[case]
    codes, scale, offset = fused[:3]
    assert torch.equal(codes, want[0]), f"{int((codes != want[0]).sum())} codes differ"
    torch.testing.assert_close(scale, want[1], rtol=1e-5, atol=1e-5 * float(want[1].abs().max()))
    torch.testing.assert_close(offset, want[2], rtol=1e-5,
                               atol=1e-5 * float(want[2].abs().max()))  # fmt: skip
    for got, ref_out in zip(fused[3:], want[3:], strict=True):  # h's later use, a GELU output
        torch.testing.assert_close(got, ref_out, rtol=1e-5, atol=1e-5 * float(ref_out.abs().max()))
    if CASES[case][2] == "gelu":  # the same floats as the unfused GELU: identical outputs
        for a, u in zip(fused, unfused, strict=True):
            assert torch.equal(a, u)
