"""Random single-layer cases and the three-way parity check used by the fuzz tests.

A *case* is one quantized layer (``nn.Linear`` or ``nn.Conv2d``) with a random format (bits
1-8 or ternary, symmetric or affine, per-tensor/channel/block, optional 2:4), random shapes
(tiny, odd, K smaller than the block, batch 1) and random data (normal at scales 1e-6..1e6,
a large common offset, constant or all-zero blocks, small integers that land on rounding
ties, heavy tails). Several linear cases share one model (one branch each, fed by slices of
one input) so one TVM build checks several cases.

For each case :func:`check` compares the QAT forward, the ``reference`` target and,
optionally, the TVM ``llvm`` target:

* the activation codes of every ``rq.quantize`` are bit-identical between QAT
  (``RQQuantize.quantize``), reference and llvm, and their scale/offset agree to float32
  rounding;
* outputs agree within a float bound: ``TOL · (|X̂| ⊗ |Ŵ|)`` elementwise, i.e. relative to
  the sum of absolute products of the dequantized operands (the integer core is exact; the
  float epilogue and float32 summation order are not), never relative to the output itself,
  which may cancel to ~0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import rqcompile as rq
from rqcompile.quant.bitpack import unpack_signs
from rqcompile.quant.modules import RQQuantize

#: Output tolerance relative to Σ|x̂||ŵ| (float32 summation over K ≤ 512 plus the epilogue).
TOL = 2e-5
BITS = (1, 1.5, 2, 3, 4, 5, 6, 7, 8)
DATA = ("normal", "offset", "const_blocks", "zeros", "ints", "heavy")


@dataclass(frozen=True)
class Case:
    """One quantized layer. ``k`` is in_features (linear) or in_channels (conv)."""

    kind: str  # "linear" | "conv"
    k: int
    n: int
    spec: rq.LayerSpec
    x_data: str
    w_data: str
    scale_exp: int
    seed: int
    conv: tuple[int, int, int, int] = (1, 1, 0, 1)  # kernel, stride, padding, groups

    def layer(self) -> nn.Module:
        g = torch.Generator().manual_seed(self.seed)
        if self.kind == "linear":
            m: nn.Module = nn.Linear(self.k, self.n)
        else:
            ks, stride, pad, groups = self.conv
            m = nn.Conv2d(self.k, self.n, ks, stride=stride, padding=pad, groups=groups)
        with torch.no_grad():
            m.weight.copy_(fill(m.weight.shape, self.w_data, 0, g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))
        return m


def fill(shape: tuple[int, ...] | torch.Size, how: str, scale_exp: int, g: torch.Generator) -> Any:
    """Random data of one of the :data:`DATA` patterns, K last, scaled by 10**scale_exp."""
    s = 10.0**scale_exp
    x = torch.randn(*shape, generator=g)
    if how == "offset":  # small spread around a large mean: cancellation in the epilogue
        x = 10.0 * s + 0.01 * s * x
    elif how == "const_blocks":  # every other group of 4 along K constant (one of them 0)
        x = x * s
        k = shape[-1]
        for j in range(0, k, 8):
            x[..., j : j + 4] = 0.0 if j % 16 == 0 else float(s) * 0.5
    elif how == "zeros":
        x = torch.zeros(*shape)
    elif how == "ints":  # small integers: many values exactly on rounding ties
        x = torch.randint(-4, 5, tuple(shape), generator=g).float() * s
    elif how == "heavy":
        x = x.pow(3) * s
    else:
        x = x * s
    return x


# -- strategies -----------------------------------------------------------------------------


@st.composite
def quant_spec(
    draw: st.DrawFn, *, k: int, role: str, force_symmetric: bool = False, bits: float = 0
) -> Any:
    bits = bits or draw(st.sampled_from(BITS))
    symmetric = True if bits == 1.5 or force_symmetric else draw(st.booleans())
    blocks = sorted({d for d in (4, 8, 16, 32, 64, 128) if k % d == 0 or d >= k})
    bad = [d for d in (4, 8, 16, 32, 64, 128) if d < k and k % d]
    if bad and draw(st.integers(0, 3)) == 0:  # now and then a block that does not divide K
        blocks.append(bad[0])
    grans: list[Any] = [rq.PerChannel(), *(rq.PerGroup(b) for b in blocks)]
    if role == "weight":
        grans.append(rq.PerTensor())
    gran = draw(st.sampled_from(grans))
    return rq.QuantSpec(bits=bits, symmetric=symmetric, granularity=gran)


def _block(q: rq.QuantSpec, k: int) -> int:
    g = q.granularity
    return min(g.size, k) if isinstance(g, rq.PerGroup) else k


@st.composite
def layer_spec(
    draw: st.DrawFn, *, k: int, allow_weight_only: bool = True, binary: bool = False
) -> rq.LayerSpec:
    sparse = not binary and k % 4 == 0 and draw(st.booleans())
    w = draw(quant_spec(k=k, role="weight", force_symmetric=sparse, bits=1 if binary else 0))
    if sparse and _block(w, k) % 4:
        sparse = False
    a = None
    if binary or not allow_weight_only or draw(st.integers(0, 5)) < 5:
        a = draw(quant_spec(k=k, role="activation", bits=1 if binary else 0))
    return rq.LayerSpec(
        weight=w,
        activation=a,
        sparsity=rq.NMSparsity(2, 4) if sparse else None,
        estimator=draw(st.sampled_from(["ridge", "ridge", "ste"])),
        ridge_lambda=draw(st.sampled_from([0.0, 0.01, 0.01, 1.0])),
    )


K_VALUES = st.one_of(
    st.integers(1, 9), st.sampled_from([12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 160, 256, 384])
)


@st.composite
def linear_case(draw: st.DrawFn) -> Case:
    binary = draw(st.integers(0, 4)) == 0  # A1W1: the XNOR-popcount kernel when K % 32 == 0
    k = draw(st.sampled_from([32, 64, 96, 256]) if binary and draw(st.booleans()) else K_VALUES)
    return Case(
        kind="linear",
        k=k,
        n=draw(st.integers(1, 12)),
        spec=draw(layer_spec(k=k, binary=binary)),
        x_data=draw(st.sampled_from(DATA)),
        w_data=draw(st.sampled_from(DATA)),
        scale_exp=draw(st.integers(-6, 6)),
        seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def conv_case(draw: st.DrawFn) -> Case:
    groups = draw(st.sampled_from([1, 1, 2]))
    # A1W1 with 32 | C/g: the XNOR-popcount route (sign words through im2col)
    binary = draw(st.integers(0, 4)) == 0
    cpg = draw(st.sampled_from([32, 64] if binary else [1, 3, 4, 8, 16, 32]))
    ks = draw(st.sampled_from([1, 2, 3]))
    k = cpg * groups
    # blocks run along C/g inside each kernel tap, or over whole taps (conv_weight_block)
    spec = draw(layer_spec(k=cpg * ks * ks if cpg < 4 else cpg, binary=binary))
    return Case(
        kind="conv",
        k=k,
        n=groups * draw(st.integers(1, 4)),
        spec=spec,
        x_data=draw(st.sampled_from(DATA)),
        w_data=draw(st.sampled_from(DATA)),
        scale_exp=draw(st.integers(-4, 4)),
        seed=draw(st.integers(0, 2**16)),
        conv=(ks, draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1])), groups),
    )


# -- models ---------------------------------------------------------------------------------


class Branches(nn.Module):
    """One linear layer per case, each reading its own slice of one input."""

    def __init__(self, layers: list[nn.Module], ks: list[int]) -> None:
        super().__init__()
        self.ks = ks
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs, a = [], 0
        for k, layer in zip(self.ks, self.layers, strict=True):
            outs.append(layer(x[:, a : a + k]))
            a += k
        return tuple(outs)


def linear_model(cases: list[Case], m: int) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor]]:
    """The multi-branch model, its input and each branch's input slice."""
    xs = []
    for c in cases:
        g = torch.Generator().manual_seed(c.seed + 1)
        xs.append(fill((m, c.k), c.x_data, c.scale_exp, g))
    return Branches([c.layer() for c in cases], [c.k for c in cases]), torch.cat(xs, 1), xs


def conv_input(c: Case, m: int, hw: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(c.seed + 1)
    return fill((m, hw, hw, c.k), c.x_data, c.scale_exp, g).permute(0, 3, 1, 2).contiguous()


def qconfig(cases: list[Case], prefix: str) -> rq.QConfig:
    return rq.QConfig(
        default=None,
        overrides=tuple(rq.Override(f"{prefix}{i}", c.spec) for i, c in enumerate(cases)),
    )


def expected_prepare_error(c: Case) -> type[Exception] | None:
    """The typed error ``prepare`` must raise for an impossible linear case, else None."""
    for q in (c.spec.weight, c.spec.activation):
        if q is None or not isinstance(q.granularity, rq.PerGroup):
            continue
        if c.k > q.granularity.size and c.k % q.granularity.size:
            return rq.NumericsError
    return None


# -- checks ---------------------------------------------------------------------------------


def _stored_codes(q: torch.Tensor, op: Any, k: int) -> torch.Tensor:
    """Undo the storage layout of ``rq.quantize`` codes: int64 codes as RQQuantize makes them."""
    a = op.attrs_dict
    if a["pack"] == "bits32":
        return unpack_signs(q, k).to(torch.int64)
    q = q.to(torch.int64)
    return q + 128 if a["bits"] == 8 and not a["symmetric"] else q


def probe_module(irm: Any) -> tuple[Any, list[Any]]:
    """``irm`` with every ``rq.quantize`` result appended to the outputs of main."""
    f = irm.main
    quants = [op for op in f.ops if op.name == "rq.quantize"]
    extra = tuple(r for op in quants for r in op.results)
    probe = irm.replace(funcs=(dataclasses.replace(f, outputs=(*f.outputs, *extra)),))
    return probe, quants


def magnitude(c: Case, qat_layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ|x̂||ŵ| per output element (the scale of float rounding in the layer)."""
    with torch.no_grad():
        xd = x.abs() if c.spec.activation is None else qat_layer.input_quant(x).abs()
        wd = qat_layer.weight_quant(qat_layer.weight).abs()
        if c.kind == "linear":
            return F.linear(xd, wd) + qat_layer.bias.abs()
        _, stride, pad, groups = c.conv
        if c.spec.activation is not None:
            # x̂ = s·q + c is rounded at the size of s·q and c, not of x̂: a zero next to
            # -645 in one block dequantizes to -0.27 = 644.9 - 645.2 (± 6e-5). Activation
            # blocks lie within a pixel's channels, so the pixel's largest |x̂| bounds both.
            xd = xd + xd.amax(dim=1, keepdim=True)
        return F.conv2d(xd, wd, qat_layer.bias.abs(), stride, pad, 1, groups)


def assert_close_to(got: torch.Tensor, want: torch.Tensor, mag: torch.Tensor, what: str) -> None:
    bound = TOL * mag + 1e-30
    err = (got.double() - want.double()).abs()
    bad = err > bound
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} element(s) off; worst error {float(err.max()):.3e} "
        f"vs bound {float(bound.flatten()[int(err.flatten().argmax())]):.3e}"
    )


def check(
    cases: list[Case],
    qat: nn.Module,
    x: torch.Tensor,
    inputs: list[torch.Tensor],
    *,
    prefix: str,
    tvm: bool,
) -> None:
    """The three-way parity check for a prepared model whose layer i is ``prefix + str(i)``."""
    irm = rq.convert(qat)
    probe, quants = probe_module(irm)
    with torch.no_grad():
        want = qat(x)
    want = want if isinstance(want, tuple) else (want,)
    nout = len(want)
    ref = rq.build(probe, "reference")(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    targets = {"reference": ref}
    if tvm:
        got = rq.build(probe, "llvm")(x)
        targets["llvm"] = got if isinstance(got, tuple) else (got,)
    # 1. activation codes: QAT == reference == llvm, bit for bit
    for qi, op in enumerate(quants):
        layer = str(op.loc.layer) if op.loc is not None else "?"
        i = int(layer.removeprefix(prefix)) if layer.startswith(prefix) else -1
        codes, scale, offset = ref[nout + 3 * qi : nout + 3 * qi + 3]
        if tvm:
            q2, s2, o2 = targets["llvm"][nout + 3 * qi : nout + 3 * qi + 3]
            assert torch.equal(codes, q2), f"{layer}: llvm quantize codes differ from reference"
            torch.testing.assert_close(s2, scale, rtol=1e-5, atol=0)
            # the offset x̄ - s·q̄ cancels: its float32 error scales with the data, not itself
            data = float((inputs[i] if 0 <= i < len(cases) else x).abs().max())
            torch.testing.assert_close(o2, offset, rtol=2e-6, atol=1e-6 * data + 1e-30)
        if 0 <= i < len(cases) and cases[i].kind == "linear":
            aq: RQQuantize = qat.get_submodule(f"{prefix}{i}.input_quant")
            qc, qs, _ = aq.quantize(inputs[i])
            k = int(qc.shape[-1])
            assert torch.equal(_stored_codes(codes, op, k), qc.to(torch.int64)), (
                f"{layer}: reference quantize codes differ from the QAT quantizer"
            )
            torch.testing.assert_close(scale, qs.float(), rtol=1e-6, atol=0)
    # 2. outputs within the float bound
    for i, c in enumerate(cases):
        layer = qat.get_submodule(f"{prefix}{i}")
        inp = inputs[i] if c.kind == "linear" else x
        mag = magnitude(c, layer, inp)
        assert_close_to(ref[i], want[i], mag, f"{prefix}{i} reference vs QAT ({c})")
        if tvm:
            assert_close_to(targets["llvm"][i], ref[i], mag, f"{prefix}{i} llvm vs reference ({c})")


def build_linear(cases: list[Case], m: int) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor]]:
    model, x, xs = linear_model(cases, m)
    qat = rq.prepare(model, (x,), qconfig(cases, "layers.")).eval()
    return qat, x, xs


def conv_hw(c: Case) -> int:
    ks, stride, pad, _ = c.conv
    return max(ks, 3) + (stride - 1) + (0 if pad else 1)
