"""print_module: inline goldens of the exact text, and attribute formatting."""

# ruff: noqa: E501  (golden IR lines are as long as the printer makes them)

from __future__ import annotations

import math

import pytest
import torch

from rqcompile.ir import Builder, Func, Loc, Module, Op, TensorType, Value, print_module, print_op
from rqcompile.ir.printer import format_attr, format_string


def example() -> Module:
    """A 4-bit quantized linear layer with bias and ReLU."""
    b = Builder()
    x = b.arg(TensorType((None, 64), "f32"))
    xq, xs, xc = b.op(
        "rq.quantize",
        x,
        bits=4,
        symmetric=False,
        block=32,
        estimator="ridge",
        ridge_lambda=0.01,
        loc=Loc("fc1"),
    )  # type: ignore[misc]
    wq = b.const("fc1.wq", torch.arange(8 * 32, dtype=torch.uint8).reshape(8, 32), loc=Loc("fc1"))
    ws = b.const("fc1.ws", torch.full((8, 2), 0.5), loc=Loc("fc1"))
    wc = b.const("fc1.wc", torch.full((8, 2), -0.25), loc=Loc("fc1"))
    wsum = b.const("fc1.wsum", torch.arange(16, dtype=torch.int32).reshape(8, 2), loc=Loc("fc1"))
    y = b.op(
        "rq.int_matmul",
        xq,
        xs,
        xc,
        wq,
        ws,
        wc,
        wsum,
        block=32,
        w_bits=4,
        w_signed=False,
        loc=Loc("fc1", "model.py:12"),
    )
    bias = b.const("fc1.bias", torch.linspace(-1, 1, 8), loc=Loc("fc1"))
    z = b.op("rq.add", y, bias, loc=Loc("fc1"))
    b.ret(b.op("rq.relu", z, loc=Loc("act")))
    return b.module()


EXAMPLE = """\
// rq.constants: 5 elided (pass constants= to parse_module)
//   "fc1.bias" : tensor<8xf32> sha256=e558859ff57a
//   "fc1.wc" : tensor<8x2xf32> sha256=04f706b24542
//   "fc1.wq" : tensor<8x32xui8> sha256=40aff2e9d2d8
//   "fc1.ws" : tensor<8x2xf32> sha256=18b00b6b9e7d
//   "fc1.wsum" : tensor<8x2xi32> sha256=5d85718ec594
module {
  func.func @main(%0: tensor<?x64xf32>) -> (tensor<?x8xf32>) {
    %1, %2, %3 = "rq.quantize"(%0) {bits = 4 : i64, block = 32 : i64, estimator = "ridge", pack = "none", ridge_lambda = 0.01 : f64, symmetric = false} : (tensor<?x64xf32>) -> (tensor<?x64xi8>, tensor<?x2xf32>, tensor<?x2xf32>) loc("fc1")
    %4 = "rq.const"() {dtype = "ui8", name = "fc1.wq", shape = [8 : i64, 32 : i64]} : () -> tensor<8x32xui8> loc("fc1")
    %5 = "rq.const"() {dtype = "f32", name = "fc1.ws", shape = [8 : i64, 2 : i64]} : () -> tensor<8x2xf32> loc("fc1")
    %6 = "rq.const"() {dtype = "f32", name = "fc1.wc", shape = [8 : i64, 2 : i64]} : () -> tensor<8x2xf32> loc("fc1")
    %7 = "rq.const"() {dtype = "i32", name = "fc1.wsum", shape = [8 : i64, 2 : i64]} : () -> tensor<8x2xi32> loc("fc1")
    %8 = "rq.int_matmul"(%1, %2, %3, %4, %5, %6, %7) {block = 32 : i64, w_bits = 4 : i64, w_signed = false} : (tensor<?x64xi8>, tensor<?x2xf32>, tensor<?x2xf32>, tensor<8x32xui8>, tensor<8x2xf32>, tensor<8x2xf32>, tensor<8x2xi32>) -> tensor<?x8xf32> loc("fc1"("model.py:12"))
    %9 = "rq.const"() {dtype = "f32", name = "fc1.bias", shape = [8 : i64]} : () -> tensor<8xf32> loc("fc1")
    %10 = "rq.add"(%8, %9) : (tensor<?x8xf32>, tensor<8xf32>) -> tensor<?x8xf32> loc("fc1")
    %11 = "rq.relu"(%10) : (tensor<?x8xf32>) -> tensor<?x8xf32> loc("act")
    "func.return"(%11) : (tensor<?x8xf32>) -> ()
  }
}
"""


def test_golden_example() -> None:
    assert print_module(example()) == EXAMPLE


def test_golden_with_resources() -> None:
    b = Builder()
    x = b.arg(TensorType((2,), "f32"))
    s = b.const("s", torch.tensor([1.0, -2.0]))
    b.ret(b.op("rq.mul", x, s), x)
    assert (
        print_module(b.module(), elide_constants=False)
        == """\
// rq.constants: 1 in dialect_resources below
//   "s" : tensor<2xf32> sha256=ee4ac73c2bd2
module {
  func.func @main(%0: tensor<2xf32>) -> (tensor<2xf32>, tensor<2xf32>) {
    %1 = "rq.const"() {dtype = "f32", name = "s", shape = [2 : i64]} : () -> tensor<2xf32>
    %2 = "rq.mul"(%0, %1) : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
    "func.return"(%2, %0) : (tensor<2xf32>, tensor<2xf32>) -> ()
  }
}

{-#
  dialect_resources: {
    rq: {
      "s": "0x040000000000803F000000C0"
    }
  }
#-}
"""
    )


def test_golden_odd_names_and_no_outputs() -> None:
    t = TensorType((), "i1")
    op = Op("my.op", (), (), {"k-ey": "v"}, Loc('a"b', "x.py:1"))
    m = Module((Func("not bare", (Value(3, t),), (op,), ()),))
    assert (
        print_module(m)
        == """\
module {
  func.func @"not bare"(%0: tensor<i1>) -> () {
    "my.op"() {"k-ey" = "v"} : () -> () loc("a\\"b"("x.py:1"))
    "func.return"() : () -> ()
  }
}
"""
    )


def test_empty_module() -> None:
    assert print_module(Module()) == "module {\n}\n"


def test_printer_returns_and_never_prints(capsys: pytest.CaptureFixture[str]) -> None:
    text = print_module(example(), elide_constants=False)
    assert isinstance(text, str)
    assert capsys.readouterr() == ("", "")


def test_printing_is_deterministic_and_ignores_value_ids() -> None:
    m = example()
    f = m.main
    shift = {
        v.id: Value(v.id + 100, v.type) for v in (*f.args, *(r for o in f.ops for r in o.results))
    }
    renamed = Func(
        f.name,
        tuple(shift[v.id] for v in f.args),
        tuple(
            Op(
                o.name,
                tuple(shift[v.id] for v in o.operands),
                tuple(shift[v.id] for v in o.results),
                o.attrs,
                o.loc,
            )
            for o in f.ops
        ),
        tuple(shift[v.id] for v in f.outputs),
    )
    assert print_module(m.replace(funcs=(renamed,))) == EXAMPLE


def test_undefined_values_print_visibly() -> None:
    t = TensorType((2,), "f32")
    op = Op("rq.relu", (Value(5, t),), (Value(6, t),))
    assert print_op(op, {6: "%0"}) == '%0 = "rq.relu"(%undef.5) : (tensor<2xf32>) -> tensor<2xf32>'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4, "4 : i64"),
        (-7, "-7 : i64"),
        (2**63 - 1, "9223372036854775807 : i64"),
        (4.0, "4.0 : f64"),
        (0.1, "0.1 : f64"),
        (1e-2, "0.01 : f64"),
        (1e-5, "1.0e-05 : f64"),
        (1.5e16, "1.5e+16 : f64"),
        (1e16, "1.0e+16 : f64"),
        (-0.0, "-0.0 : f64"),
        (5e-324, "5.0e-324 : f64"),
        (math.inf, "0x7FF0000000000000 : f64"),
        (-math.inf, "0xFFF0000000000000 : f64"),
        (math.nan, "0x7FF8000000000000 : f64"),
        (True, "true"),
        (False, "false"),
        ("ridge", '"ridge"'),
        ((), "[]"),
        ((1, 2), "[1 : i64, 2 : i64]"),
        ((1, (2.5, "a"), True), '[1 : i64, [2.5 : f64, "a"], true]'),
    ],
)
def test_format_attr(value: object, text: str) -> None:
    assert format_attr(value) == text  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("s", "text"),
    [
        ("plain", '"plain"'),
        ('q"uote', '"q\\"uote"'),
        ("back\\slash", '"back\\\\slash"'),
        ("tab\tnl\n", '"tab\\tnl\\n"'),
        ("\x00\x7f", '"\\00\\7F"'),
        ("λ", '"\\CE\\BB"'),
    ],
)
def test_format_string(s: str, text: str) -> None:
    assert format_string(s) == text
