"""Core IR values: the Builder, structural equality and immutability."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rqcompile.errors import VerifyError
from rqcompile.ir import Builder, Func, Loc, Module, Op, TensorType, Value, ssa_names
from rqcompile.ir.core import attr_key, normalize_attr

F = TensorType((None, 4), "f32")


def small(bias: float = 0.5, layer: str = "fc") -> Module:
    b = Builder()
    x = b.arg(F)
    w = b.const("fc.w", torch.arange(12, dtype=torch.float32).reshape(3, 4), loc=Loc(layer))
    y = b.op("rq.linear", x, w, loc=Loc(layer))
    b.ret(b.op("rq.add_scalar", y, value=bias, loc=Loc(layer)))
    return b.module()


def test_builder_numbers_values_in_creation_order() -> None:
    b = Builder()
    x = b.arg(F)
    codes, scale, offset = b.op(
        "rq.quantize", x, bits=4, symmetric=False, block=4, estimator="ridge", ridge_lambda=0.01
    )  # type: ignore[misc]
    assert [v.id for v in (x, codes, scale, offset)] == [0, 1, 2, 3]
    assert codes.type == TensorType((None, 4), "i8")
    assert scale.type == offset.type == TensorType((None, 1), "f32")
    b.ret(scale)
    m = b.module()
    assert m.main.args == (x,)
    assert m.main.outputs == (scale,)
    assert ssa_names(m.main) == {0: "%0", 1: "%1", 2: "%2", 3: "%3"}


def test_builder_fills_defaults_and_normalizes_attrs() -> None:
    b = Builder()
    x = b.arg(TensorType((1, 3, 8, 8), "f32"))
    w = b.const("w", torch.zeros(4, 3, 3, 3))
    y = b.op("rq.conv2d", x, w, padding=[1, 1])
    s = b.op("rq.mul_scalar", y, value=2)  # int given for a float attribute
    b.ret(s)
    conv, mul = b.module().main.ops[1:]
    assert conv.attrs_dict == {"dilation": (1, 1), "groups": 1, "padding": (1, 1), "stride": (1, 1)}
    assert [k for k, _ in conv.attrs] == sorted(conv.attrs_dict)
    assert type(mul.attr("value")) is float
    assert y.type == TensorType((1, 4, 8, 8), "f32")


def test_builder_attrs_mapping_for_awkward_names() -> None:
    b = Builder()
    c = b.op("rq.const", attrs={"name": "k", "shape": (2,), "dtype": "f32"})
    assert c.type == TensorType((2,), "f32")


def test_builder_accepts_type_text() -> None:
    b = Builder()
    assert b.arg("tensor<?x4xf32>").type == F


def test_builder_const_registers_and_checks() -> None:
    b = Builder()
    t = torch.randint(-8, 8, (4, 4), dtype=torch.int8)
    v = b.const("codes", t, dtype="i4", loc=Loc("fc"))
    assert v.type == TensorType((4, 4), "i4")
    b.const("codes", t.clone())  # same data again is fine
    with pytest.raises(VerifyError, match="already registered with different data"):
        b.const("codes", t + 1)
    with pytest.raises(VerifyError, match=r"stored as torch\.int32"):
        b.const("x", t, dtype="i32")
    with pytest.raises(VerifyError, match="no rq IR element type"):
        b.const("y", torch.zeros(2, dtype=torch.float64))
    b.ret(v)
    m = b.module()
    assert m.constant("codes") is not None
    assert torch.equal(m.constant("codes"), t)
    op = m.main.ops[0]
    assert op.attrs_dict == {"dtype": "i4", "name": "codes", "shape": (4, 4)}
    assert op.loc == Loc("fc")


def test_builder_errors_name_op_and_layer() -> None:
    b = Builder()
    x = b.arg(TensorType((None, 5), "f32"))
    w = b.const("w", torch.zeros(3, 4))
    with pytest.raises(
        VerifyError, match=r"rq.linear \(layer 'fc1'\): x tensor<\?x5xf32>: K = 5 here but K = 4"
    ):
        b.op("rq.linear", x, w, loc=Loc("fc1"))
    with pytest.raises(VerifyError, match=r"Did you mean 'rq\.relu'"):
        b.op("rq.reul", x)
    with pytest.raises(VerifyError, match="missing attribute 'axis'"):
        b.op("rq.softmax", x)
    with pytest.raises(VerifyError, match="not an attribute value"):
        b.op("rq.softmax", x, axis=None)
    other = Builder().arg(TensorType((7,), "f32"))  # id 0, like x, but another value
    with pytest.raises(VerifyError, match="another Builder"):
        b.op("rq.relu", other)
    with pytest.raises(VerifyError, match="another Builder"):
        b.ret(Value(42, F))


def test_builder_multiple_funcs() -> None:
    b = Builder()
    b.ret(b.op("rq.relu", b.arg(F)))
    helper = b.func("helper")
    b.ret(b.op("rq.tanh", b.arg(F)))
    m = b.module()
    assert [f.name for f in m.funcs] == ["helper", "main"]
    assert m.func("helper") == helper
    assert m.main.ops[0].name == "rq.tanh"
    assert m.main.args[0].id == 0  # numbering restarts per function
    with pytest.raises(VerifyError, match=r"call Builder\.ret"):
        Builder().func("empty")


def test_modules_compare_structurally() -> None:
    assert small() == small()
    assert hash(small()) == hash(small())
    assert small() != small(bias=0.25)
    assert small() != small(layer="other")
    assert small() != "module"


def test_func_equality_ignores_value_ids() -> None:
    t = TensorType((2,), "f32")
    a = Func(
        "main", (Value(0, t),), (Op("rq.relu", (Value(0, t),), (Value(1, t),)),), (Value(1, t),)
    )
    b = Func(
        "main", (Value(7, t),), (Op("rq.relu", (Value(7, t),), (Value(3, t),)),), (Value(3, t),)
    )
    c = Func(
        "main", (Value(7, t),), (Op("rq.relu", (Value(7, t),), (Value(3, t),)),), (Value(7, t),)
    )
    assert a == b and hash(a) == hash(b)
    assert a != c


def test_attr_types_are_exact() -> None:
    t = TensorType((2,), "f32")
    x, y = Value(0, t), Value(1, t)

    def op(v: object) -> Op:
        return Op("test.op", (x,), (y,), {"a": v})

    assert op(4) != op(4.0)
    assert op(True) != op(1)
    assert op(0.0) != op(-0.0)
    assert op(math.nan) == op(math.nan)
    assert op((1, 2)) == op([1, 2])
    assert op((1, 2)) != op((1, 2.0))
    assert attr_key(4) != attr_key(4.0)
    assert normalize_attr([1, ["a", False]]) == (1, ("a", False))
    for bad in (None, 2**63, torch.tensor(1), 1j, {"a": 1}):
        with pytest.raises(VerifyError):
            normalize_attr(bad)


def test_op_attrs_are_sorted_and_accessible() -> None:
    op = Op("test.op", attrs={"b": 1, "a": "x"})
    assert op.attrs == (("a", "x"), ("b", 1))
    assert op.attr("b") == 1
    assert op.attr("c", None) is None
    with pytest.raises(KeyError, match="has no attribute 'c'"):
        op.attr("c")
    with pytest.raises(TypeError):
        op.attrs_dict["a"] = "y"  # type: ignore[index]
    with pytest.raises(VerifyError, match="given twice"):
        Op("test.op", attrs=[("a", 1), ("a", 2)])
    with pytest.raises(VerifyError, match="one"):
        _ = op.result
    with pytest.raises(VerifyError, match="must be Values"):
        Op("test.op", (1,))  # type: ignore[arg-type]
    with pytest.raises(VerifyError, match="non-empty"):
        Op("")


def test_everything_is_immutable() -> None:
    m = small()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.funcs = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.main.ops = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.main.ops[0].name = "rq.x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.main.args[0].id = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.constants["new"] = torch.zeros(1)  # type: ignore[index]
    assert isinstance(m.main.ops, tuple) and isinstance(m.main.ops[0].operands, tuple)


def test_module_constants_sorted_and_compared_by_bytes() -> None:
    m = Module((), {"b": torch.zeros(2), "a": torch.tensor([math.nan, -0.0])})
    assert list(m.constants) == ["a", "b"]
    assert m == Module((), {"a": torch.tensor([math.nan, -0.0]), "b": torch.zeros(2)})
    assert m != Module((), {"a": torch.tensor([math.nan, 0.0]), "b": torch.zeros(2)})
    assert m != Module(
        (), {"a": torch.tensor([math.nan, -0.0]), "b": torch.zeros(2, dtype=torch.int32)}
    )
    assert m != Module((), {"a": torch.tensor([math.nan, -0.0]), "b": torch.zeros(1, 2)})
    assert m != Module((), {"a": torch.tensor([math.nan, -0.0])})
    with pytest.raises(VerifyError, match="no rq IR element type"):
        Module((), {"x": torch.zeros(1, dtype=torch.float16)})
    with pytest.raises(VerifyError, match=r"torch\.Tensor"):
        Module((), {"x": [1.0]})  # type: ignore[dict-item]


def test_module_accessors() -> None:
    m = small()
    assert m.main.name == "main"
    with pytest.raises(VerifyError, match="no func @other"):
        m.func("other")
    with pytest.raises(KeyError, match=r"constants: fc\.w"):
        m.constant("nope")
    assert "fc.w: tensor<3x4xf32>" in repr(m)
    assert str(m).startswith("// rq.constants: 1")
    assert m.replace(constants={}) != m


def test_loc_str() -> None:
    assert str(Loc("fc1")) == "fc1"
    assert str(Loc("fc1", "model.py:3")) == "fc1 (model.py:3)"


def test_modules_pickle_and_deepcopy() -> None:
    import copy
    import pickle

    m = small()
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m)), copy.copy(m)):
        assert clone == m
        assert isinstance(clone.constants, type(m.constants))
    deep = copy.deepcopy(m)
    assert deep.constant("fc.w").data_ptr() != m.constant("fc.w").data_ptr()
