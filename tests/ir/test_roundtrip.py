"""print/parse round trips: random modules from the catalogue and arbitrary attributes."""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rqcompile.errors import ParseError
from rqcompile.ir import (
    DTYPES,
    Builder,
    Func,
    Loc,
    Module,
    Op,
    TensorType,
    Value,
    parse_module,
    print_module,
    verify,
)
from rqcompile.ir.core import attr_key

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECIAL_FLOATS = [
    0.1,
    1e-2,
    -0.0,
    0.0,
    math.inf,
    -math.inf,
    math.nan,
    5e-324,
    1.7976931348623157e308,
    1e-5,
    1e16,
    -2.5e-300,
]
floats_any = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(SPECIAL_FLOATS)
texts = st.text(max_size=6)
locs = st.none() | st.builds(Loc, texts, st.none() | texts)


def check_round_trip(m: Module) -> None:
    full = print_module(m, elide_constants=False)
    assert parse_module(full) == m
    assert print_module(parse_module(full), elide_constants=False) == full
    elided = print_module(m)
    assert parse_module(elided, constants=m.constants) == m
    assert print_module(parse_module(elided, constants=m.constants)) == elided


def random_tensor(
    g: torch.Generator, shape: tuple[int, ...], dtype: str, special: bool
) -> torch.Tensor:
    if dtype == "f32":
        t = torch.randn(shape, generator=g)
        if special and t.numel() >= 3:
            t.view(-1)[:3] = torch.tensor([math.nan, -0.0, -math.inf])
        return t
    lo, hi, tdt = {
        "i1": (0, 2, torch.bool), "i8": (-128, 128, torch.int8), "ui8": (0, 256, torch.uint8),
        "i32": (-(2**31), 2**31, torch.int32), "ui32": (0, 2**32, torch.uint32),
        "i64": (-(2**62), 2**62, torch.int64),
    }[dtype]  # fmt: skip
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(tdt)


@st.composite
def catalogue_modules(draw: st.DrawFn) -> Module:
    """A verified module: random chains of catalogue ops over one [M, 64] input."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    special = draw(st.booleans())
    count = itertools.count()
    extra = {}
    for _ in range(draw(st.integers(0, 2))):  # constants no op reads
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        extra[draw(texts) + f"#{next(count)}"] = random_tensor(
            g,
            shape,
            draw(st.sampled_from(["f32", "i1", "i8", "ui8", "i32", "ui32", "i64"])),
            special,
        )
    b = Builder(extra)

    def const(shape: tuple[int, ...], dtype: str) -> Value:
        name = draw(texts) + f"#{next(count)}"
        return b.const(name, random_tensor(g, shape, dtype, special), loc=draw(locs))

    if draw(st.booleans()):
        b.ret(b.op("rq.sigmoid", b.arg(TensorType((2,), "f32"))))
        b.func(draw(st.text(min_size=1, max_size=5).filter(lambda s: s != "main")))
    m_dim = draw(st.sampled_from([None, 1, 3]))
    vals = [b.arg(TensorType((m_dim, 64), "f32"))]
    extras: list[Value] = []

    def pick() -> Value:
        return draw(st.sampled_from(vals))

    def quantize(v: Value, bits: float, block: int, pack: str = "none") -> tuple[Value, ...]:
        return b.op(
            "rq.quantize",
            v,
            bits=bits,
            symmetric=bits == 1.5 or draw(st.booleans()),
            block=block,
            estimator=draw(st.sampled_from(["ridge", "ste"])),
            ridge_lambda=draw(st.floats(0, 1)),
            pack=pack,
            loc=draw(locs),
        )  # type: ignore[return-value]

    def weights(n: int, nb: int) -> tuple[Value, Value, Value]:
        return const((n, nb), "f32"), const((n, nb), "f32"), const((n, nb), "i32")

    def qmatmul() -> None:
        v = draw(st.sampled_from([x for x in vals if x.type.shape[-1] % 32 == 0]))
        k, n = v.type.shape[-1], draw(st.integers(1, 4))
        block = draw(st.sampled_from([b_ for b_ in (32, 64) if k % b_ == 0]))  # type: ignore[operator]
        kind = draw(st.sampled_from(["int", "xnor", "sparse"]))
        if kind == "xnor":
            xb, xs, xc = quantize(v, 1, block, "bits32")
            wb = const((n, k // 32), "ui32")  # type: ignore[operator]
            out = b.op(
                "rq.xnor_popcount_matmul",
                xb,
                xs,
                xc,
                wb,
                *weights(n, k // block),
                block=block,
                k=k,
                loc=draw(locs),
            )  # type: ignore[operator]
        else:
            xq, xs, xc = quantize(v, draw(st.sampled_from([1, 1.5, 2, 4, 8])), block)
            w_bits = draw(st.integers(1, 8))
            if kind == "sparse":
                ws = (const((n, k // 2), "i8"), const((n, k // 8), "ui8"))  # type: ignore[operator]
                out = b.op(
                    "rq.sparse24_matmul",
                    xq,
                    xs,
                    xc,
                    *ws,
                    *weights(n, k // block),
                    block=block,
                    w_bits=w_bits,
                    loc=draw(locs),
                )  # type: ignore[operator]
            else:
                wq = const((n, k), "i8") if w_bits > 4 else const((n, k // 2), "ui8")  # type: ignore[operator]
                out = b.op(
                    "rq.int_matmul",
                    xq,
                    xs,
                    xc,
                    wq,
                    *weights(n, k // block),
                    block=block,
                    w_bits=w_bits,
                    w_signed=draw(st.booleans()),
                    loc=draw(locs),
                )  # type: ignore[operator]
        vals.append(out)  # type: ignore[arg-type]

    def unary() -> None:
        name = draw(st.sampled_from(["rq.relu", "rq.silu", "rq.tanh", "rq.sigmoid"]))
        vals.append(b.op(name, pick(), loc=draw(locs)))  # type: ignore[arg-type]

    def with_attrs() -> None:
        v = pick()
        choice = draw(st.integers(0, 5))
        if choice == 0:
            out = b.op("rq.gelu", v, approximate=draw(st.sampled_from(["none", "tanh"])))
        elif choice == 1:
            out = b.op(
                draw(st.sampled_from(["rq.add_scalar", "rq.mul_scalar"])), v, value=draw(floats_any)
            )
        elif choice == 2:
            out = b.op("rq.causal_mask", v, fill=draw(floats_any))
        elif choice == 3:
            out = b.op("rq.softmax", v, axis=draw(st.integers(-2, 1)))
        elif choice == 4:
            out = b.op("rq.mean", v, axes=(-1,), keepdim=True)
        else:
            out = b.op(
                "rq.slice",
                v,
                axis=1,
                start=draw(st.integers(-3, 3)),
                stop=draw(st.integers(1, 2**63 - 1)),
                step=draw(st.integers(1, 3)),
            )
            if out.type.shape[-1] == 0:  # type: ignore[union-attr]
                extras.append(out)  # type: ignore[arg-type]
                return
        vals.append(out)  # type: ignore[arg-type]

    def linear_or_bias() -> None:
        v = pick()
        k = v.type.shape[-1]
        if draw(st.booleans()):
            y = b.op("rq.linear", v, const((draw(st.integers(1, 4)), k), "f32"), loc=draw(locs))  # type: ignore[arg-type]
        else:
            other = const((k,), "f32") if draw(st.booleans()) else v  # type: ignore[arg-type]
            y = b.op(draw(st.sampled_from(["rq.add", "rq.sub", "rq.mul", "rq.div"])), v, other)
        vals.append(y)  # type: ignore[arg-type]

    def layout() -> None:
        v, w = pick(), pick()
        vals.append(b.op("rq.concat", v, w, axis=-1))  # type: ignore[arg-type]
        extras.append(b.op("rq.permute", v, dims=(1, 0)))  # type: ignore[arg-type]
        extras.append(b.op("rq.reshape", v, shape=(-1,)))  # type: ignore[arg-type]
        extras.append(b.op("rq.cast", v, dtype=draw(st.sampled_from(DTYPES))))  # type: ignore[arg-type]

    recipes: list[Callable[[], None]] = [qmatmul, unary, with_attrs, linear_or_bias, layout]
    for _ in range(draw(st.integers(1, 5))):
        draw(st.sampled_from(recipes))()
    outs = [vals[-1], *draw(st.lists(st.sampled_from(vals + extras), max_size=2))]
    b.ret(*outs)
    m = b.module()
    verify(m)
    return m


@SETTINGS
@given(catalogue_modules())
def test_catalogue_modules_round_trip(m: Module) -> None:
    check_round_trip(m)


attr_values = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | floats_any | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=8,
)
tensor_types = st.builds(
    TensorType,
    st.lists(st.none() | st.integers(0, 5), max_size=3).map(tuple),
    st.sampled_from(DTYPES),
)


@st.composite
def generic_modules(draw: st.DrawFn) -> Module:
    """Any ops (registered or not) with arbitrary attributes, names, locs and types."""
    funcs = []
    for _ in range(draw(st.integers(0, 2))):
        ids = itertools.count(draw(st.integers(0, 50)), draw(st.integers(1, 3)))
        args = [Value(next(ids), t) for t in draw(st.lists(tensor_types, max_size=2))]
        defined = list(args)
        ops = []
        for _ in range(draw(st.integers(0, 3))):
            operands = draw(st.lists(st.sampled_from(defined), max_size=3)) if defined else []
            results = [Value(next(ids), t) for t in draw(st.lists(tensor_types, max_size=3))]
            name = draw(st.text(min_size=1, max_size=8).filter(lambda s: s != "func.return"))
            attrs = draw(st.dictionaries(st.text(min_size=1, max_size=5), attr_values, max_size=4))
            ops.append(Op(name, tuple(operands), tuple(results), attrs, draw(locs)))
            defined += results
        outputs = draw(st.lists(st.sampled_from(defined), max_size=2)) if defined else []
        funcs.append(
            Func(draw(st.text(min_size=1, max_size=6)), tuple(args), tuple(ops), tuple(outputs))
        )
    return Module(tuple(funcs))


@SETTINGS
@given(generic_modules())
def test_generic_modules_round_trip(m: Module) -> None:
    check_round_trip(m)


def float_bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("value", [*SPECIAL_FLOATS, float.fromhex("0x1.fffffffffffffp-1023"), 3.0])
def test_float_attrs_round_trip_bit_exactly(value: float) -> None:
    b = Builder()
    b.ret(b.op("rq.mul_scalar", b.arg(TensorType((2,), "f32")), value=value))
    m = b.module()
    back = parse_module(print_module(m))
    assert back == m
    got = back.main.ops[0].attr("value")
    assert type(got) is float
    if not math.isnan(value):
        assert float_bits(got) == float_bits(value)  # type: ignore[arg-type]


def test_int_and_float_attrs_stay_distinct() -> None:
    t = TensorType((), "f32")
    op = Op("test.op", (), (Value(0, t),), {"a": 4, "b": 4.0, "c": True, "d": (1, 1.0, False)})
    m = Module((Func("main", (), (op,), ()),))
    back = parse_module(print_module(m)).main.ops[0]
    assert [attr_key(v) for _, v in back.attrs] == [attr_key(v) for _, v in op.attrs]


def test_constants_of_every_storage_dtype_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    consts: dict[str, Any] = {
        f"c_{d}": random_tensor(g, (2, 3), d, True)
        for d in ("f32", "i1", "i8", "ui8", "i32", "ui32", "i64")
    }
    consts["scalar"] = torch.tensor(2.5)
    consts["empty"] = torch.zeros(0, 4, dtype=torch.int32)
    m = Module((), consts)
    check_round_trip(m)


def test_func_attributes_round_trip_and_compare() -> None:
    x = Value(0, TensorType((None, 4), "f32"))
    y = Value(1, x.type)
    op = Op("rq.relu", (x,), (y,))
    attrs = {"rq.dynamic_dims": [["batch", 1, 64]], "rq.input_names": ["x"], "rq.empty": []}
    f = Func("main", (x,), (op,), (y,), attrs)
    text = print_module(Module((f,)))
    assert (
        'func.func @main(%0: tensor<?x4xf32>) -> (tensor<?x4xf32>) attributes {rq.dynamic_dims = '
        '[["batch", 1 : i64, 64 : i64]], rq.empty = [], rq.input_names = ["x"]} {'
    ) in text
    back = parse_module(text)
    assert back == Module((f,)) and back.main.attr("rq.dynamic_dims") == (("batch", 1, 64),)
    assert Module((Func("main", (x,), (op,), (y,)),)) != back  # attributes take part in ==
    with pytest.raises(ParseError, match="expected '\\{' after attributes"):
        parse_module(text.replace("attributes {", "attributes ("))
