"""Fused attention: the matcher (passes/ir/patterns/attention.py) and the kernel (kernels/attention.py).

The kernel is float32 with reassociated sums, so it is held to the float tolerance of the
other float ops against the reference target (torch): ``rtol = 1e-5``, ``atol = 1e-5`` of
the output's magnitude. Shapes cover the paths of the kernel: 8-row tiles and odd row
counts, padded key blocks, the in-register ``kᵀ`` transpose (``S, E`` multiples of 8) and
the scalar one, 1- and 2-vector ``P·v`` tiles, 4 and 8 lanes; and the groups it must not
take (a non-causal mask constant, a score with a second use, ``Ev`` not a multiple of 8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402
from rqcompile.ir import Builder, Module, TensorType  # noqa: E402
from rqcompile.ir.core import Value  # noqa: E402
from rqcompile.targets.tvm.emit import module as emit  # noqa: E402
from rqcompile.targets.tvm.adapter import host_llvm_target, te, topi  # noqa: E402
from rqcompile.passes.ir.patterns.attention import find_attention  # noqa: E402
from rqcompile.targets.tvm.kernels.fast_math import exp_poly  # noqa: E402
from rqcompile.targets.tvm.kernels.attention import (  # noqa: E402
    attention_supported,
    te_attention,
)
from rqcompile.testing.ir_cases import one_module  # noqa: E402

pytestmark = pytest.mark.tvm

Make = Callable[[Builder, torch.Generator], tuple[list[torch.Tensor], list[Value]]]


def _arg(b: Builder, t: torch.Tensor, ins: list[torch.Tensor]) -> Value:
    ins.append(t)
    return b.arg(TensorType.of(t))


def _explicit(
    bsz: int,
    t: int,
    heads: int,
    d: int,
    *,
    bias: bool = True,
    merge_heads: bool = True,
    mask: str = "causal",
    probs_out: bool = False,
) -> Make:
    """The demo transformer's attention: one qkv projection output, split into heads,
    ``matmul · scale``, a mask, softmax, ``matmul``, heads merged back."""

    def make(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
        c, ins = heads * d, []
        y = _arg(b, torch.randn(bsz * t, 3 * c, generator=gen), ins)
        if bias:
            y = b.op("rq.add", y, b.const(f"bias{id(make)}", torch.randn(3 * c, generator=gen)))
        y = b.op("rq.reshape", y, shape=(bsz, t, 3 * c))
        q, k, v = (
            b.op(
                "rq.permute",
                b.op(
                    "rq.reshape",
                    b.op("rq.slice", y, axis=2, start=i * c, stop=(i + 1) * c, step=1),
                    shape=(bsz, t, heads, d),
                ),
                dims=(0, 2, 1, 3),
            )
            for i in range(3)
        )
        s = b.op("rq.matmul", q, b.op("rq.permute", k, dims=(0, 1, 3, 2)))
        s = b.op("rq.mul_scalar", s, value=d**-0.5)
        if mask == "causal_mask":
            s = b.op("rq.causal_mask", s)
        elif mask != "none":
            keep = {"causal": 0, "offset2": 2}.get(mask)
            m = (
                torch.rand(t, t, generator=gen) > 0.5
                if keep is None
                else ~torch.ones(t, t, dtype=torch.bool).tril(keep)
            )
            s = b.op("rq.masked_fill", s, b.const(f"mask{id(make)}", m), value=-math.inf)
        p = b.op("rq.softmax", s, axis=-1)
        o = b.op("rq.matmul", p, v)
        if merge_heads:
            o = b.op("rq.reshape", b.op("rq.permute", o, dims=(0, 2, 1, 3)), shape=(bsz, t, c))
        return ins, [o, p] if probs_out else [o]

    return make


def _sdpa(batch: tuple[int, ...], t: int, s: int, e: int, ev: int, causal: bool) -> Make:
    def make(b: Builder, gen: torch.Generator) -> tuple[list[torch.Tensor], list[Value]]:
        ins: list[torch.Tensor] = []
        q, k, v = (
            _arg(b, torch.randn(*batch, n, w, generator=gen), ins)
            for n, w in ((t, e), (s, e), (s, ev))
        )
        return ins, [b.op("rq.sdpa", q, k, v, causal=causal, scale=0.7)]

    return make


#: name -> (builder, attention groups the CPU emitter fuses)
CASES: dict[str, tuple[Make, int]] = {
    "demo-shape": (_explicit(2, 16, 2, 32), 1),
    "rows-12-scalar-kT": (_explicit(1, 12, 1, 16, bias=False, merge_heads=False), 1),
    "odd-rows-7": (_explicit(2, 7, 3, 8), 1),
    "causal_mask-op": (_explicit(1, 10, 2, 8, mask="causal_mask"), 1),
    "mask-offset-2": (_explicit(1, 9, 1, 8, mask="offset2"), 1),
    "no-mask": (_explicit(1, 8, 2, 8, mask="none"), 1),
    "sdpa-causal-T<S": (_sdpa((2,), 5, 9, 8, 16, True), 1),
    "sdpa-T>S": (_sdpa((1, 2), 11, 6, 4, 8, False), 1),
    "sdpa-causal-no-batch": (_sdpa((), 9, 9, 5, 24, True), 1),
    # not fused, still right
    "random-mask": (_explicit(1, 8, 1, 8, mask="random"), 0),
    "probs-returned": (_explicit(1, 8, 1, 8, probs_out=True), 0),
    "ev-not-lanes": (_sdpa((2,), 5, 7, 8, 6, True), 0),
}


def _module(make: Make, seed: int = 0) -> tuple[Module, list[torch.Tensor]]:
    b = Builder()
    ins, outs = make(b, torch.Generator().manual_seed(seed))
    b.ret(*outs)
    return b.module(), ins


def _groups(m: Module) -> list[Any]:
    return [g for g in find_attention(m.main, m.constants) if attention_supported(g, 8)]


@pytest.mark.parametrize("case", list(CASES))
def test_fused_groups(case: str) -> None:
    make, want = CASES[case]
    m, _ = _module(make)
    assert len(_groups(m)) == want
    fused = emit.emit_module(m, options={"attention": {"lanes": 8}})
    kernels = [gv.name_hint for gv, f in fused.functions.items() if gv.name_hint == "attention"]
    assert len(kernels) == min(want, 1)


def test_demo_group_absorbs_split_bias_and_head_layout() -> None:
    m, _ = _module(_explicit(2, 16, 2, 32))
    (g,) = find_attention(m.main, m.constants)
    names = sorted(m.main.ops[i].name for i in g.ops)
    assert names.count("rq.slice") == 3 and names.count("rq.add") == 1
    assert g.inputs == (m.main.args[0], m.main.ops[0].result)  # qkv and the bias constant
    assert g.offset == 0 and g.scale == 32**-0.5
    assert g.out_steps == (("permute", (0, 2, 1, 3)), ("reshape", (2, 16, 64)))
    assert g.result == m.main.outputs[0]


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
    """Every case in one module (one LLVM build), then split per case."""
    m, inputs, spans = one_module({name: make for name, (make, _) in CASES.items()})
    got, want = rq.build(m, "llvm")(*inputs), rq.build(m, "reference")(*inputs)
    return {n: (got[lo:hi], want[lo:hi]) for n, (lo, hi) in spans.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(built: dict[str, Any], case: str) -> None:
    for got, want in zip(*built[case], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("lanes", [4, 8])
@pytest.mark.parametrize("case", ["demo-shape", "odd-rows-7", "sdpa-causal-T<S"])
def test_kernel_alone_any_lanes(case: str, lanes: int) -> None:
    """The TE stage by itself (4 lanes: SSE/NEON width, scalar ``kᵀ`` path)."""
    m, ins = _module(CASES[case][0])
    (g,) = find_attention(m.main, m.constants)
    phs = [te.placeholder([int(d) for d in v.type.shape], "float32") for v in g.inputs]
    out = te_attention(*phs, group=g, lanes=lanes)
    lib = tvm.compile(te.create_prim_func([*phs, out]), target=host_llvm_target())
    known = {v.id: t for v, t in zip(m.main.args, ins, strict=True)}
    for op in m.main.ops:
        if op.name == "rq.const":
            known[op.result.id] = m.constants[str(op.attr("name"))]
    args = [known[v.id] for v in g.inputs]
    got = torch.empty(*[int(d) for d in g.result.type.shape])
    lib(*args, got)
    want = rq.build(m, "reference")(*ins)
    want = want[0] if isinstance(want, tuple) else want
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_exp_poly_is_topi_fast_exp() -> None:
    """Same operations as TOPI's ``fast_exp`` (which the unfused softmax uses): bit-equal."""
    x = te.placeholder((256,), "float32", name="x")
    ours = te.compute((256,), lambda i: exp_poly(x[i] * 1.0))
    theirs = topi.fast_exp(x)
    a = torch.linspace(-100, 90, 256)
    outs = []
    for y in (ours, theirs):
        lib = tvm.compile(te.create_prim_func([x, y]), target=host_llvm_target())
        out = torch.empty(256)
        lib(a, out)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
