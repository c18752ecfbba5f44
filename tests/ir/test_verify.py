"""verify(): every error kind, and all problems reported in one VerifyError."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rqcompile.errors import VerifyError
from rqcompile.ir import Builder, Func, Loc, Module, Op, TensorType, Value, collect_problems, verify

Q = {"bits": 4, "symmetric": False, "block": 128, "estimator": "ridge", "ridge_lambda": 0.01}


def qlinear() -> Module:
    """quantize -> int_matmul (4-bit weights) -> add bias -> relu."""
    b = Builder()
    x = b.arg(TensorType((None, 256), "f32"))
    xq, xs, xc = b.op("rq.quantize", x, **Q, loc=Loc("fc1"))  # type: ignore[misc]
    wq = b.const("fc1.wq", torch.zeros(64, 128, dtype=torch.uint8), loc=Loc("fc1"))
    ws = b.const("fc1.ws", torch.ones(64, 2), loc=Loc("fc1"))
    wc = b.const("fc1.wc", torch.zeros(64, 2), loc=Loc("fc1"))
    wsum = b.const("fc1.wsum", torch.zeros(64, 2, dtype=torch.int32), loc=Loc("fc1"))
    y = b.op(
        "rq.int_matmul",
        xq,
        xs,
        xc,
        wq,
        ws,
        wc,
        wsum,
        block=128,
        w_bits=4,
        w_signed=True,
        loc=Loc("fc1", "model.py:12"),
    )
    bias = b.const("fc1.bias", torch.zeros(64), loc=Loc("fc1"))
    b.ret(b.op("rq.relu", b.op("rq.add", y, bias, loc=Loc("fc1")), loc=Loc("act")))
    return b.module()


def with_op(m: Module, index: int, op: Op) -> Module:
    ops = list(m.main.ops)
    ops[index] = op
    return m.replace(funcs=(dataclasses.replace(m.main, ops=tuple(ops)),))


def problems_of(m: Module) -> list[str]:
    return collect_problems(m)


def test_valid_module_passes() -> None:
    verify(qlinear())
    assert problems_of(qlinear()) == []


def test_unknown_op() -> None:
    m = qlinear()
    relu = m.main.ops[-1]
    (p,) = problems_of(with_op(m, -1, dataclasses.replace(relu, name="rq.rellu")))
    assert p.startswith("@main %11 = rq.rellu (layer 'act'): unknown op 'rq.rellu'")
    assert "Did you mean 'rq.relu'" in p


def test_operand_used_before_definition_and_undefined() -> None:
    m = qlinear()
    ops = list(m.main.ops)
    ops[4], ops[5] = ops[5], ops[4]  # int_matmul now runs before the wsum const it reads
    swapped = m.replace(funcs=(dataclasses.replace(m.main, ops=tuple(ops)),))
    (p,) = problems_of(swapped)
    assert (
        "rq.int_matmul (layer 'fc1', model.py:12): operand #6 %8 is used before its definition" in p
    )
    relu = m.main.ops[-1]
    ghost = dataclasses.replace(relu, operands=(Value(99, relu.operands[0].type),))
    (p,) = problems_of(with_op(m, -1, ghost))
    assert p == "@main %11 = rq.relu (layer 'act'): operand #0 (value id 99) is never defined"


def test_operand_type_differs_from_definition() -> None:
    m = qlinear()
    relu = m.main.ops[-1]
    wrong = Value(relu.operands[0].id, TensorType((3, 64), "f32"))
    probs = problems_of(with_op(m, -1, dataclasses.replace(relu, operands=(wrong,))))
    assert "operand #0 %10 is used as tensor<3x64xf32> but defined as tensor<?x64xf32>" in probs[0]


def test_result_types_disagree_with_inference() -> None:
    m = qlinear()
    mm = m.main.ops[5]
    bad = Value(mm.results[0].id, TensorType((None, 32), "f32"))
    probs = problems_of(with_op(m, 5, dataclasses.replace(mm, results=(bad,))))
    assert probs[0] == (
        "@main %8 = rq.int_matmul (layer 'fc1', model.py:12): result #0 has type "
        "tensor<?x32xf32>, but rq.int_matmul infers tensor<?x64xf32>"
    )
    q = m.main.ops[0]
    probs = problems_of(with_op(m, 0, dataclasses.replace(q, results=q.results[:2])))
    assert any("has 2 results, but rq.quantize produces 3" in p for p in probs)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (
            {k: v for k, v in Q.items() if k != "block"} | {"pack": "none"},
            "missing attribute 'block'",
        ),
        (Q | {"pack": "none", "color": "red"}, "unexpected attribute 'color'"),
        (Q | {"pack": "none", "block": 128.0}, "attribute 'block' has type float, expected int"),
        (Q | {"pack": "none", "ridge_lambda": 1}, "attribute 'ridge_lambda' has type int"),
        (Q | {"pack": "none", "symmetric": 0}, "attribute 'symmetric' has type int, expected bool"),
        (Q | {"pack": "none", "bits": 9}, "bits=9 must be 1, 1.5 or 2..8"),
        (Q, "missing attribute 'pack'"),  # defaults are filled by the Builder, not by verify
    ],
)
def test_attribute_problems(attrs: dict[str, object], expected: str) -> None:
    m = qlinear()
    q = m.main.ops[0]
    probs = problems_of(with_op(m, 0, dataclasses.replace(q, attrs=attrs)))
    assert len(probs) == 1 and probs[0].startswith("@main %1, %2, %3 = rq.quantize (layer 'fc1'): ")
    assert expected in probs[0]


def test_operand_count() -> None:
    m = qlinear()
    relu = m.main.ops[-1]
    (p,) = problems_of(with_op(m, -1, dataclasses.replace(relu, operands=relu.operands * 2)))
    assert "takes 1 operand(s) (x), got 2" in p


def test_const_checks() -> None:
    m = qlinear()
    missing = m.replace(constants={k: v for k, v in m.constants.items() if k != "fc1.bias"})
    (p,) = problems_of(missing)
    assert p.startswith("@main %9 = rq.const (layer 'fc1'): constant 'fc1.bias' is missing")
    shape = m.replace(constants={**m.constants, "fc1.bias": torch.zeros(32)})
    (p,) = problems_of(shape)
    assert "constant 'fc1.bias' has shape [32], but the op declares 64" in p
    dtype = m.replace(constants={**m.constants, "fc1.bias": torch.zeros(64, dtype=torch.int32)})
    (p,) = problems_of(dtype)
    assert "stored as torch.int32, but dtype f32 needs torch.float32" in p


def test_const_dynamic_dims_are_not_compared() -> None:
    t = TensorType((None, 2), "f32")
    op = Op("rq.const", (), (Value(0, t),), {"name": "w", "shape": (-1, 2), "dtype": "f32"})
    m = Module((Func("main", (), (op,), (op.result,)),), {"w": torch.zeros(5, 2)})
    verify(m)
    bad = m.replace(constants={"w": torch.zeros(5, 3)})
    assert "has shape [5, 3], but the op declares ?x2" in problems_of(bad)[0]
    rank = m.replace(constants={"w": torch.zeros(10)})
    assert "has shape [10]" in problems_of(rank)[0]


def test_outputs_and_redefinitions() -> None:
    m = qlinear()
    f = m.main
    t = f.outputs[0].type
    bad_out = m.replace(funcs=(dataclasses.replace(f, outputs=(Value(77, t),)),))
    assert problems_of(bad_out) == ["@main: output #0 (value id 77) is never defined"]
    wrong_type = m.replace(
        funcs=(dataclasses.replace(f, outputs=(Value(f.outputs[0].id, f.args[0].type),)),)
    )
    assert (
        "is returned as tensor<?x256xf32> but defined as tensor<?x64xf32>"
        in problems_of(wrong_type)[0]
    )
    relu = f.ops[-1]
    redefine = dataclasses.replace(relu, results=(Value(f.args[0].id, relu.results[0].type),))
    probs = problems_of(with_op(m, -1, redefine))
    assert any("redefines value id 0" in p for p in probs)
    dup_args = m.replace(funcs=(dataclasses.replace(f, args=(f.args[0], f.args[0])),))
    assert problems_of(dup_args) == ["@main: argument #1 redefines value id 0"]


def test_duplicate_func_names() -> None:
    m = qlinear()
    assert problems_of(m.replace(funcs=(m.main, m.main))) == ["@main: function name defined twice"]


def test_all_problems_reported_at_once() -> None:
    m = qlinear()
    ops = list(m.main.ops)
    ops[0] = dataclasses.replace(ops[0], attrs=Q | {"pack": "none", "bits": 0})
    ops[-1] = dataclasses.replace(ops[-1], name="rq.nope")
    t = m.main.outputs[0].type
    f = dataclasses.replace(m.main, ops=tuple(ops), outputs=(m.main.outputs[0], Value(50, t)))
    broken = Module((f,), {k: v for k, v in m.constants.items() if k != "fc1.ws"})
    with pytest.raises(VerifyError) as info:
        verify(broken)
    msg = str(info.value)
    assert msg.startswith(
        "module failed verification with 4 problems:\n  - @main %1, %2, %3 = rq.quantize"
    )
    assert "bits=0" in msg
    assert "@main %5 = rq.const (layer 'fc1'): constant 'fc1.ws' is missing" in msg
    assert "@main %11 = rq.nope (layer 'act'): unknown op" in msg
    assert "@main: output #1 (value id 50) is never defined" in msg
    assert msg.count("\n  - ") == 4


def test_single_problem_wording() -> None:
    m = qlinear()
    with pytest.raises(VerifyError, match=r"with 1 problem:\n"):
        verify(m.replace(funcs=(m.main, m.main)))
