"""rq IR → relax emitter: coverage, every op built for llvm vs the reference target.

Single-op cases are small IR modules made with the ``Builder``. Building each one alone
would cost ~1 s of LLVM time per op, so all cases go into ONE module (each case has its own
arguments and outputs) built once per test module; each case is still its own test and
compares only its own outputs. Integer-valued outputs (codes, integer ops, layout ops,
selects) must be bit-exact (``torch.equal``); float arithmetic within 1e-5 relative.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402  (after the importorskip guard)
from rqcompile.ir import Builder, Module, TensorType  # noqa: E402
from rqcompile.ir.core import Value  # noqa: E402
from rqcompile.quant import reference as R  # noqa: E402
from rqcompile.quant.bitpack import pack_nibbles, pack_signs, pack_sparse24  # noqa: E402
from rqcompile.targets.reference import KERNELS  # noqa: E402
from rqcompile.targets.tvm import pipelines  # noqa: E402
from rqcompile.targets.tvm.emit import module as emit  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.adapter import relax  # noqa: E402

pytestmark = pytest.mark.tvm


def test_every_reference_op_has_an_emitter() -> None:
    assert set(KERNELS) - set(emit.EMITTERS) == set()
    assert set(emit.EMITTERS) - set(KERNELS) == set()


# -- single-op cases --------------------------------------------------------------------------


@dataclass
class Case:
    """Collects one case's arguments (with their tensors) and checked outputs."""

    b: Builder
    gen: torch.Generator
    name: str
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[tuple[Value, bool]] = field(default_factory=list)  # (value, exact)

    def arg(self, t: torch.Tensor) -> Value:
        self.inputs.append(t)
        return self.b.arg(TensorType.of(t))

    def randn(self, *shape: int) -> Value:
        return self.arg(torch.randn(*shape, generator=self.gen))

    def codes(self, lo: int, hi: int, *shape: int) -> torch.Tensor:
        return torch.randint(lo, hi + 1, shape, generator=self.gen, dtype=torch.int8)

    def out(self, v: Any, exact: bool) -> None:
        for x in v if isinstance(v, tuple) else (v,):
            self.outputs.append((x, exact))


def _quantize(
    bits: float,
    symmetric: bool,
    block: int,
    shape: tuple[int, ...],
    *,
    estimator: str = "ridge",
    pack: str = "none",
) -> Callable[[Case], None]:
    def make(c: Case) -> None:
        x = c.randn(*shape)
        q, s, o = c.b.op(
            "rq.quantize",
            x,
            bits=bits,
            symmetric=symmetric,
            block=block,
            estimator=estimator,
            ridge_lambda=0.01,
            pack=pack,
        )
        c.out(q, exact=True)
        c.out((s, o), exact=False)

    return make


def _act(
    c: Case, m: int, k: int, block: int, bits: float = 4, pack: str = "none"
) -> tuple[Value, ...]:
    """Activation codes/scale/offset from the reference quantizer, as arguments."""
    x = torch.randn(m, k, generator=c.gen)
    q, s, o = R.quantize(x, bits=bits, symmetric=False, block=block, pack=pack)
    return c.arg(q), c.arg(s), c.arg(o)


def _wparams(c: Case, name: str, codes: torch.Tensor, block: int) -> tuple[Value, ...]:
    n, k = codes.shape
    ws = torch.rand(n, k // block, generator=c.gen) * 0.1
    wc = torch.randn(n, k // block, generator=c.gen) * 0.01
    wsum = R.code_sums(codes, block)
    return (
        c.b.const(f"{name}.ws", ws),
        c.b.const(f"{name}.wc", wc),
        c.b.const(f"{name}.wsum", wsum),
    )


def _int_matmul(w_bits: int, w_signed: bool) -> Callable[[Case], None]:
    def make(c: Case) -> None:
        m, n, k, block = 6, 12, 64, 32
        xq, xs, xc = _act(c, m, k, block)
        lo, hi = (-8, 7) if w_signed else (0, 15)
        codes = c.codes(lo, hi, n, k) if w_bits <= 4 else c.codes(-128, 127, n, k)
        stored = pack_nibbles(codes, signed=w_signed) if w_bits <= 4 else codes
        name = f"im{w_bits}{w_signed}"
        wq = c.b.const(f"{name}.wq", stored, dtype="ui8" if w_bits <= 4 else "i8")
        ws, wc, wsum = _wparams(c, name, codes, block)
        c.out(
            c.b.op(
                "rq.int_matmul",
                xq,
                xs,
                xc,
                wq,
                ws,
                wc,
                wsum,
                block=block,
                w_bits=w_bits,
                w_signed=w_signed,
            ),
            exact=False,
        )

    return make


def _xnor(c: Case) -> None:
    m, n, k, block = 5, 10, 128, 64
    xb, xs, xc = _act(c, m, k, block, bits=1, pack="bits32")
    codes = (torch.randint(0, 2, (n, k), generator=c.gen) * 2 - 1).to(torch.int8)
    wb = c.b.const("xnor.wbits", pack_signs(codes))
    ws, wc, wsum = _wparams(c, "xnor", codes, block)
    c.out(
        c.b.op("rq.xnor_popcount_matmul", xb, xs, xc, wb, ws, wc, wsum, block=block, k=k),
        exact=False,
    )


def _sparse24(c: Case) -> None:
    m, n, k, block = 4, 8, 64, 32
    xq, xs, xc = _act(c, m, k, block)
    dense = c.codes(-8, 7, n, k).reshape(n, k // 4, 4)
    keep = torch.rand(n, k // 4, 4, generator=c.gen).argsort(-1) < 2
    codes = (dense * keep).reshape(n, k)
    vals, idx = pack_sparse24(codes)
    wv, wi = c.b.const("s24.vals", vals), c.b.const("s24.idx", idx)
    ws, wc, wsum = _wparams(c, "s24", codes, block)
    c.out(
        c.b.op("rq.sparse24_matmul", xq, xs, xc, wv, wi, ws, wc, wsum, block=block, w_bits=4),
        exact=False,
    )


def _qbmm(c: Case) -> None:
    block = 16
    a = R.quantize(torch.randn(2, 5, 32, generator=c.gen), bits=4, symmetric=False, block=block)
    bq = R.quantize(torch.randn(2, 3, 32, generator=c.gen), bits=4, symmetric=False, block=block)
    args = [c.arg(t) for t in (*a, *bq)]
    c.out(c.b.op("rq.qbmm", *args, block=block), exact=False)


def _unary(name: str, **attrs: Any) -> Callable[[Case], None]:
    return lambda c: c.out(c.b.op(name, c.randn(3, 5, 7), **attrs), exact=name == "rq.relu")


def _binary(name: str, a: tuple[int, ...], b: tuple[int, ...]) -> Callable[[Case], None]:
    # one IEEE operation per element: must be exact
    return lambda c: c.out(c.b.op(name, c.randn(*a), c.randn(*b)), exact=True)


def _layout(
    name: str, in_shape: tuple[int, ...], dtype: torch.dtype, **attrs: Any
) -> Callable[[Case], None]:
    def make(c: Case) -> None:
        t = torch.randn(*in_shape, generator=c.gen)
        x = c.arg((t * 40).to(dtype) if dtype == torch.int8 else t)
        c.out(c.b.op(name, x, **attrs), exact=True)

    return make


def _concat(n: int, dtype: torch.dtype) -> Callable[[Case], None]:
    def make(c: Case) -> None:
        xs = [
            c.arg((torch.randn(3, 1 + i % 3, 2, generator=c.gen) * 40).to(dtype)) for i in range(n)
        ]
        c.out(c.b.op("rq.concat", *xs, axis=1), exact=True)

    return make


def _im2col(dtype: torch.dtype, **attrs: Any) -> Callable[[Case], None]:
    return _layout("rq.im2col", (2, 7, 6, 3), dtype, **attrs)


def _with_weights(
    name: str, x: tuple[int, ...], *ws: tuple[int, ...], exact: bool = False, **attrs: Any
) -> Callable[[Case], None]:
    def make(c: Case) -> None:
        params = [
            c.b.const(f"{c.name}.{i}", torch.randn(*s, generator=c.gen)) for i, s in enumerate(ws)
        ]
        c.out(c.b.op(name, c.randn(*x), *params, **attrs), exact=exact)

    return make


def _embedding(c: Case) -> None:
    ids = c.arg(torch.randint(0, 10, (2, 3), generator=c.gen))
    c.out(
        c.b.op("rq.embedding", ids, c.b.const("emb.table", torch.randn(10, 4, generator=c.gen))),
        exact=True,
    )


def _masked_fill(c: Case) -> None:
    mask = c.b.const("mf.mask", torch.rand(4, 5, generator=c.gen) > 0.5)
    c.out(c.b.op("rq.masked_fill", c.randn(2, 4, 5), mask, value=-math.inf), exact=True)


def _sdpa(causal: bool) -> Callable[[Case], None]:
    def make(c: Case) -> None:
        q, k, v = c.randn(2, 5, 8), c.randn(2, 7, 8), c.randn(2, 7, 6)
        c.out(c.b.op("rq.sdpa", q, k, v, causal=causal, scale=0.3), exact=False)

    return make


def _cast(src: torch.dtype, dtype: str) -> Callable[[Case], None]:
    def make(c: Case) -> None:
        t = torch.randn(4, 6, generator=c.gen) * 50
        t[0, :3] = torch.tensor([0.0, -0.5, 0.5])
        c.out(c.b.op("rq.cast", c.arg(t.to(src)), dtype=dtype), exact=True)

    return make


def _bool_masks(c: Case) -> None:
    """rq.compare / rq.logical / rq.logical_not / rq.where (padding-mask arithmetic)."""
    a, b = c.randn(3, 5), c.randn(3, 5)
    gt = c.b.op("rq.compare", a, b, fn="gt")
    le = c.b.op("rq.compare", a, c.b.const(f"{c.name}.zero", torch.zeros(5)), fn="le")
    both = c.b.op("rq.logical", gt, c.b.op("rq.logical_not", le), fn="and")
    either = c.b.op("rq.logical", gt, le, fn="xor")
    c.out(c.b.op("rq.where", both, a, b), exact=True)
    c.out(c.b.op("rq.where", either, b, a), exact=True)


def _wo_matmul(w_bits: int, w_signed: bool) -> Callable[[Case], None]:
    """Weight-only matmul: float x times integer codes with per-block scale and offset."""

    def make(c: Case) -> None:
        m, n, k, block = 3, 12, 64, 32
        lo, hi = ((-8, 7) if w_signed else (0, 15)) if w_bits <= 4 else (-128, 127)
        codes = c.codes(lo, hi, n, k)
        stored = pack_nibbles(codes, signed=w_signed) if w_bits <= 4 else codes
        name = f"wo{w_bits}{w_signed}"
        wq = c.b.const(f"{name}.wq", stored, dtype="ui8" if w_bits <= 4 else "i8")
        ws = c.b.const(f"{name}.ws", torch.rand(n, k // block, generator=c.gen) * 0.1 + 0.01)
        wc = c.b.const(f"{name}.wc", torch.randn(n, k // block, generator=c.gen) * 0.1)
        y = c.b.op("rq.wo_matmul", c.randn(m, k), wq, ws, wc, block=block, w_bits=w_bits,
                   w_signed=w_signed)  # fmt: skip
        c.out(y, exact=False)

    return make


def _take(c: Case) -> None:
    """rq.take (kv-cache: row ``pos`` of a position table or causal mask) at a run-time index."""
    table = c.b.const("take.table", torch.randn(6, 4, 3, generator=c.gen))
    mask = c.b.const("take.mask", torch.ones(6, 6, dtype=torch.bool).triu(1))
    pos = c.arg(torch.tensor([4]))
    c.out(c.b.op("rq.take", table, pos, axis=0), exact=True)
    c.out(c.b.op("rq.take", mask, pos, axis=-2), exact=True)
    c.out(c.b.op("rq.take", table, c.arg(torch.tensor([2, 0], dtype=torch.int32)), axis=1), exact=True)


def _cache_write(shape: tuple[int, ...], axis: int, pos: list[int]) -> Callable[[Case], None]:
    """rq.cache_write: one row per cache (per batch row with ``pos`` (B,)), in place on llvm."""

    def make(c: Case) -> None:
        row = [1 if i == axis else d for i, d in enumerate(shape)]
        y = c.b.op("rq.cache_write", c.randn(*shape), c.randn(*row), c.arg(torch.tensor(pos)),
                   axis=axis)  # fmt: skip
        c.out(y, exact=True)

    return make


def _cache_attention(
    lead: tuple[int, ...], e: int, t: int, ev: int, key_axis: int, pos: torch.Tensor
) -> Callable[[Case], None]:
    """rq.cache_attention over keys <= pos: kᵀ (E, T) or (T, E) keys, one or per-row pos."""

    def make(c: Case) -> None:
        k = c.randn(*lead, e, t) if key_axis == -1 else c.randn(*lead, t, e)
        y = c.b.op("rq.cache_attention", c.randn(*lead, 1, e), k, c.randn(*lead, t, ev),
                   c.arg(pos), scale=0.3, key_axis=key_axis)  # fmt: skip
        c.out(y, exact=False)

    return make


CASES: dict[str, Callable[[Case], None]] = {
    # integer core
    "quantize-a4": _quantize(4, False, 32, (6, 64)),
    "quantize-a8-shift": _quantize(8, False, 64, (5, 128)),
    "quantize-s8-ste": _quantize(8, True, 32, (4, 64), estimator="ste"),
    "quantize-a2-rank3": _quantize(2, False, 16, (2, 3, 32)),
    "quantize-ternary": _quantize(1.5, True, 32, (4, 64)),
    "quantize-a1-bits32": _quantize(1, False, 64, (3, 128), pack="bits32"),
    "quantize-s1-ste": _quantize(1, True, 32, (3, 64), estimator="ste"),
    "int_matmul-w8": _int_matmul(8, True),
    "int_matmul-w4-signed": _int_matmul(4, True),
    "int_matmul-w4-unsigned": _int_matmul(4, False),
    "wo_matmul-w4": _wo_matmul(4, False),
    "wo_matmul-w8": _wo_matmul(8, True),
    "xnor_popcount_matmul": _xnor,
    "sparse24_matmul": _sparse24,
    "qbmm": _qbmm,
    "repeat_blocks": lambda c: c.out(
        c.b.op("rq.repeat_blocks", c.randn(4, 3), factor=3), exact=True
    ),
    # float arithmetic
    "linear": _with_weights("rq.linear", (2, 3, 8), (5, 8)),
    "add": _binary("rq.add", (4, 6), (6,)),
    "sub": _binary("rq.sub", (2, 1, 6), (3, 6)),
    "mul": _binary("rq.mul", (3, 6), (3, 1)),
    "div": _binary("rq.div", (3, 6), (3, 6)),
    "add_scalar": lambda c: c.out(c.b.op("rq.add_scalar", c.randn(3, 4), value=0.3), exact=True),
    "mul_scalar": lambda c: c.out(c.b.op("rq.mul_scalar", c.randn(3, 4), value=-1.7), exact=True),
    "matmul-batched": lambda c: c.out(
        c.b.op("rq.matmul", c.randn(2, 4, 8), c.randn(8, 5)), exact=False
    ),
    "matmul-broadcast": lambda c: c.out(
        c.b.op("rq.matmul", c.randn(2, 1, 3, 8), c.randn(4, 8, 2)), exact=False
    ),
    "layer_norm": _with_weights("rq.layer_norm", (3, 4, 16), (16,), (16,), eps=1e-5),
    "rms_norm": _with_weights("rq.rms_norm", (3, 16), (16,), eps=1e-6),
    "softmax": _unary("rq.softmax", axis=1),
    "gelu-erf": _unary("rq.gelu", approximate="none"),
    "gelu-tanh": _unary("rq.gelu", approximate="tanh"),
    "relu": _unary("rq.relu"),
    "silu": _unary("rq.silu"),
    "tanh": _unary("rq.tanh"),
    "sigmoid": _unary("rq.sigmoid"),
    "embedding": _embedding,
    "conv2d": _with_weights(
        "rq.conv2d",
        (2, 4, 9, 8),
        (6, 2, 3, 3),
        stride=(2, 1),
        padding=(1, 2),
        dilation=(1, 2),
        groups=2,
    ),
    "max_pool2d": _layout(
        "rq.max_pool2d", (2, 3, 7, 6), torch.float32, kernel=(3, 2), stride=(2, 2), padding=(1, 1)
    ),
    "max_pool2d-chw": _layout(
        "rq.max_pool2d", (3, 6, 6), torch.float32, kernel=(2, 2), stride=(2, 2)
    ),
    "adaptive_avg_pool2d": lambda c: c.out(
        c.b.op("rq.adaptive_avg_pool2d", c.randn(2, 3, 5, 7), output_size=(3, 2)), exact=False
    ),
    "mean": lambda c: c.out(
        c.b.op("rq.mean", c.randn(2, 3, 4, 5), axes=(1, -1), keepdim=True), exact=False
    ),
    "sdpa": _sdpa(False),
    "sdpa-causal": _sdpa(True),
    # selects and data movement: exact
    "causal_mask": lambda c: c.out(c.b.op("rq.causal_mask", c.randn(2, 4, 6)), exact=True),
    "masked_fill": _masked_fill,
    "bool_masks": _bool_masks,
    "reshape-i8": _layout("rq.reshape", (2, 3, 4), torch.int8, shape=(4, -1)),
    "reshape-f32": _layout("rq.reshape", (2, 3, 4), torch.float32, shape=(3, 8)),
    "permute-i8": _layout("rq.permute", (2, 3, 4), torch.int8, dims=(2, 0, 1)),
    "permute-f32": _layout("rq.permute", (2, 3, 4), torch.float32, dims=(0, 2, 1)),
    "slice-i8": _layout("rq.slice", (3, 10, 2), torch.int8, axis=1, start=-8, stop=9, step=3),
    "slice-f32": _layout("rq.slice", (3, 10), torch.float32, axis=-1, start=2, stop=100),
    "concat-i8": _concat(3, torch.int8),
    "concat-f32-wide": _concat(19, torch.float32),
    "im2col-i8": _im2col(torch.int8, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
    "im2col-f32": _im2col(
        torch.float32, kernel=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)
    ),
    "cast-f32-i32": _cast(torch.float32, "i32"),
    "cast-i8-f32": _cast(torch.int8, "f32"),
    "cast-f32-i1": _cast(torch.float32, "i1"),
    # ops added for torch.export / Hugging Face models (ir/ops_more.py)
    "rsqrt": lambda c: c.out(c.b.op("rq.rsqrt", c.arg(torch.rand(3, 5) + 0.1)), exact=False),
    "pow_scalar-cube": _unary("rq.pow_scalar", exponent=3.0),  # negative x: sign kept
    "pow_scalar-half": lambda c: c.out(
        c.b.op("rq.pow_scalar", c.arg(torch.rand(4, 6) + 0.01), exponent=0.5), exact=False
    ),
    "broadcast_to-f32": _layout("rq.broadcast_to", (2, 1, 3, 1), torch.float32, shape=(2, 4, 3, 5)),
    "broadcast_to-lead": _layout("rq.broadcast_to", (3, 1), torch.int8, shape=(2, 3, 4)),
    "take": _take,
    # kv-cache decode (emit/cache_ops.py)
    "cache_write-kt": _cache_write((1, 3, 4, 10), 3, [7]),
    "cache_write-rows": _cache_write((2, 3, 10, 4), 2, [2, 9]),
    "cache_attention-kt": _cache_attention((1, 3), 8, 10, 8, -1, torch.tensor([6])),
    "cache_attention-rows": _cache_attention((2, 3), 8, 10, 16, -2, torch.tensor([0, 9])),
    "cache_attention-narrow": _cache_attention(
        (2,), 6, 10, 4, -2, torch.tensor([4], dtype=torch.int32)
    ),
}


@dataclass
class Built:
    ranges: dict[str, tuple[int, int, list[bool]]]  # case -> (first output, end, exact flags)
    got: tuple[torch.Tensor, ...]
    want: tuple[torch.Tensor, ...]


@pytest.fixture(scope="module")
def built() -> Built:
    b, gen = Builder(), torch.Generator().manual_seed(0)
    inputs: list[torch.Tensor] = []
    outputs: list[Value] = []
    ranges = {}
    for name, make in CASES.items():
        c = Case(b, gen, name)
        make(c)
        ranges[name] = (len(outputs), len(outputs) + len(c.outputs), [e for _, e in c.outputs])
        inputs += c.inputs
        outputs += [v for v, _ in c.outputs]
    b.ret(*outputs)
    m = b.module()
    return Built(ranges, rq.build(m, "llvm")(*inputs), rq.build(m, "reference")(*inputs))


@pytest.mark.parametrize("case", list(CASES))
def test_single_op_matches_reference(built: Built, case: str) -> None:
    lo, hi, exact = built.ranges[case]
    for i, ex in zip(range(lo, hi), exact, strict=True):
        got, want = built.got[i], built.want[i]
        assert got.dtype == want.dtype and got.shape == want.shape
        if ex:
            assert torch.equal(got, want), f"{case} output {i - lo} differs"
        else:
            scale = float(want.abs().max()) if want.numel() else 1.0
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_cases_cover_every_op() -> None:
    b = Builder()
    for name, make in CASES.items():
        make(Case(b, torch.Generator().manual_seed(0), name))
    b.ret(b.arg(TensorType((1,), "f32")))
    names = {op.name for op in b.module().main.ops} - {"rq.const"}
    assert set(KERNELS) - names == set()


# -- integer cores through the relax flow --------------------------------------------------


def test_integer_cores_bit_exact_through_relax() -> None:
    """Each core exposed by kernels.py, emitted with emit_te and built by our phases."""
    gen = torch.Generator().manual_seed(1)
    m, n, k, block = 5, 12, 128, 32
    xq = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w8 = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    w4 = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    xbits = pack_signs(torch.randint(0, 2, (m, k), generator=gen) * 2 - 1)
    wbits = pack_signs(torch.randint(0, 2, (n, k), generator=gen) * 2 - 1)
    keep = torch.rand(n, k // 4, 4, generator=gen).argsort(-1) < 2
    vals, idx = pack_sparse24((w4.reshape(n, k // 4, 4) * keep).reshape(n, k))
    nib = pack_nibbles(w4, signed=True)
    args = (xq, w8, nib, xbits, wbits, vals, idx)
    vars_ = [
        relax.Var(f"a{i}", relax.TensorType(list(t.shape), emit.TVM_DTYPES[TensorType.of(t).dtype]))
        for i, t in enumerate(args)
    ]
    bb = relax.BlockBuilder()
    with bb.function("main", vars_):
        with bb.dataflow():
            x, v8, v4, xb, wb, sv, si = vars_
            outs = [
                bb.emit_te(K.te_int_matmul_core, x, v8, block=block),
                bb.emit_te(K.te_int_matmul_core, x, v4, block=block, w_bits=4, w_signed=True),
                bb.emit_te(K.te_xnor_popcount_core, xb, wb, block=block),
                bb.emit_te(K.te_sparse24_core, x, sv, si, block=block),
            ]
            ret = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(ret)
    target = pipelines.tvm_target(rq.Target.parse("llvm"))
    mod = bb.finalize()
    tvm_phases = [p for p in pipelines.pipeline_for(target) if isinstance(p, pipelines.Phase)]
    for phase in tvm_phases[1:]:  # after emit
        mod = phase.run(mod, None).ir
    vm = relax.VirtualMachine(mod, tvm.cpu())
    got = [torch.from_dlpack(t) for t in vm["main"](*(tvm.runtime.from_dlpack(a) for a in args))]
    want = [
        R.int_matmul_core(xq, w8, block),
        R.int_matmul_core(xq, w4, block),
        R.xnor_popcount_core(xbits, wbits, block=block),
        R.sparse24_core(xq, vals, idx, block=block),
    ]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


# -- emitter properties (no LLVM) -------------------------------------------------------------


def _grouped_module(groups: int) -> Module:
    """Like convert's depthwise layers: one slice + int_matmul per group, then a concat."""
    b = Builder()
    x = b.arg(TensorType((4, 8 * groups), "f32"))
    outs = []
    for g in range(groups):
        xg = b.op("rq.slice", x, axis=1, start=8 * g, stop=8 * (g + 1))
        q, s, o = b.op(
            "rq.quantize",
            xg,
            bits=4,
            symmetric=False,
            block=8,
            estimator="ridge",
            ridge_lambda=0.01,
        )
        w = [
            b.const(f"g{g}.{n}", torch.zeros(3, *sh, dtype=dt), dtype=d)
            for n, sh, dt, d in (
                ("wq", (4,), torch.uint8, "ui8"),
                ("ws", (1,), torch.float32, None),
                ("wc", (1,), torch.float32, None),
                ("wsum", (1,), torch.int32, None),
            )
        ]
        outs.append(b.op("rq.int_matmul", q, s, o, *w, block=8, w_bits=4, w_signed=False))
    b.ret(b.op("rq.concat", *outs, axis=1))
    return b.module()


def test_repeated_kernels_are_emitted_once() -> None:
    mod = emit.emit_module(_grouped_module(20))
    names = sorted(gv.name_hint for gv in mod.functions)
    assert names.count("int_matmul") == 1 and names.count("quantize") == 1
    assert names.count("slice") == 1  # the start offset is a run-time argument
    # 20 inputs: a tree of 8-input concats, one kernel per distinct input signature
    assert sum(n.startswith("concatenate") for n in names) <= 3


def test_weights_are_parameters_not_constants() -> None:
    ir = _grouped_module(2)
    mod = emit.emit_module(ir)
    from rqcompile.names import identifier

    params = [str(p.name) for p in mod["main"].params]
    # constant names like "g0.wq" become C identifiers once, for every target (names.py)
    assert params == ["input0", *(identifier(n) for n in emit.const_params(ir))]
    assert set(emit.const_params(ir)) == set(ir.constants)
    assert "R.const" not in mod["main"].script()  # nothing baked into the code


def test_dynamic_shapes_and_unknown_ops_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    b = Builder()
    b.ret(b.op("rq.relu", b.arg(TensorType((None, 4), "f32"))))
    with pytest.raises(rq.TargetError, match=r"static shapes.*example_inputs"):
        emit.emit_module(b.module())
    monkeypatch.delitem(emit.EMITTERS, "rq.relu")
    b = Builder()
    b.ret(b.op("rq.relu", b.arg(TensorType((2, 4), "f32"))))
    with pytest.raises(rq.UnsupportedOpError, match=r"rq\.relu"):
        emit.emit_module(b.module())


def test_cache_write_updates_the_callers_tensor_in_place() -> None:
    """llvm runs rq.cache_write with call_tir_inplace: the output is the cache argument's
    memory with one row written; nothing else of it changes."""
    b = Builder()
    cache = b.arg(TensorType((2, 5, 3), "f32"))
    row = b.arg(TensorType((2, 1, 3), "f32"))
    pos = b.arg(TensorType((2,), "i64"))
    b.ret(b.op("rq.cache_write", cache, row, pos, axis=1))
    exe = rq.build(b.module(), "llvm")
    c, r, p = torch.zeros(2, 5, 3), torch.ones(2, 1, 3), torch.tensor([4, 1])
    out = exe(c, r, p)  # one output: the tensor itself
    assert out.data_ptr() == c.data_ptr()
    want = torch.zeros(2, 5, 3)
    want[0, 4] = want[1, 1] = 1.0
    assert torch.equal(c, want)
