"""parse_module: hand-written input and error messages with line and column."""

from __future__ import annotations

import pytest
import torch

from rqcompile.errors import ParseError, RQError
from rqcompile.ir import Builder, Loc, TensorType, parse_module, print_module, verify

RELU = """\
module {
  func.func @main(%x: tensor<?x4xf32>) -> (tensor<?x4xf32>) {
    %y = "rq.relu"(%x) : (tensor<?x4xf32>) -> tensor<?x4xf32> loc("act")
    "func.return"(%y) : (tensor<?x4xf32>) -> ()
  }
}
"""


def relu_module():  # type: ignore[no-untyped-def]
    b = Builder()
    b.ret(b.op("rq.relu", b.arg(TensorType((None, 4), "f32")), loc=Loc("act")))
    return b.module()


def test_hand_written_names_are_accepted() -> None:
    assert parse_module(RELU) == relu_module()


def test_module_wrapper_is_optional_and_locs_have_variants() -> None:
    text = RELU.replace("module {\n", "").rsplit("}", 1)[0]
    assert parse_module(text) == relu_module()
    unknown = parse_module(RELU.replace('loc("act")', "loc(unknown)"))
    assert unknown.main.ops[0].loc is None
    file_loc = parse_module(RELU.replace('loc("act")', 'loc("act"("m.py":3:7))'))
    assert file_loc.main.ops[0].loc == Loc("act", "m.py:3:7")


def test_parser_does_not_verify() -> None:
    m = parse_module(RELU.replace("rq.relu", "rq.unknown"))
    assert m.main.ops[0].name == "rq.unknown"
    with pytest.raises(RQError, match="unknown op"):
        verify(m)


def error(text: str, match: str, **kw: object) -> str:
    with pytest.raises(ParseError, match=match) as info:
        parse_module(text, **kw)  # type: ignore[arg-type]
    return str(info.value)


def test_error_reports_line_column_and_caret() -> None:
    msg = error(RELU.replace('"rq.relu"(%x)', '"rq.relu"(%z)'), "use of undefined value %z")
    assert msg.startswith("line 3, column 20: use of undefined value %z")
    assert msg.endswith(
        '    %y = "rq.relu"(%z) : (tensor<?x4xf32>) -> tensor<?x4xf32> loc("act")\n'
        + " " * 21
        + "^"
    )


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (
            "(tensor<?x4xf32>) -> tensor",
            "(tensor<?x5xf32>) -> tensor",
            r"%x is used as tensor<\?x5xf32>",
        ),
        (
            "(tensor<?x4xf32>) -> tensor",
            "(tensor<?x4xf32>, tensor<?x4xf32>) -> tensor",
            "1 operands but 2",
        ),
        ("%y = ", "%y, %w = ", "names 2 results but its type lists 1"),
        ('"rq.relu"(%x)', '"rq.relu"(%x) {a = 1 : i32}', "unsupported attribute type 'i32'"),
        ('"rq.relu"(%x)', '"rq.relu"(%x) {a = 1.5 : i64}', "1.5 is not an integer"),
        ('"rq.relu"(%x)', '"rq.relu"(%x) {a = 9223372036854775808 : i64}', "does not fit in i64"),
        ('"rq.relu"(%x)', '"rq.relu"(%x) {a = 1, a = 2}', "attribute 'a' given twice"),
        ('"rq.relu"(%x)', '"rq.relu"(%x) {a = "x\\q"}', "bad escape"),
        ('loc("act")', 'loc("act)', "unterminated string"),
        ('"rq.relu"(%x)', '"rq.relu"(%x) {a = "\\FF"}', "not valid UTF-8"),
        ("tensor<?x4xf32>) {", "tensor<?x4xf16>) {", "unknown element type 'f16'"),
        ("%y = ", "%x = ", "value %x is defined twice"),
        (
            '"func.return"(%y) : (tensor<?x4xf32>)',
            '"func.return"(%x, %y) : (tensor<?x4xf32>, tensor<?x4xf32>)',
            "returned types differ",
        ),
        ("}\n}\n", "}\n}\ngarbage\n", "expected func.func, a resource section or end of input"),
        ("func.func @main", "func.func main", "expected '@'"),
    ],
)
def test_errors(old: str, new: str, match: str) -> None:
    assert old in RELU
    msg = error(RELU.replace(old, new, 1), match)
    assert msg.startswith("line ")


def test_elided_constants_must_be_passed() -> None:
    b = Builder()
    b.ret(b.const("w", torch.zeros(2, 3)))
    m = b.module()
    text = print_module(m)
    msg = error(text, "constant 'w' is elided in the text; pass its tensor in parse_module")
    assert msg.startswith("line 2, column 6")
    error(
        text,
        r"declared tensor<2x3xf32>, but the tensor given has shape \[3, 2\]",
        constants={"w": torch.zeros(3, 2)},
    )
    error(text, "dtype torch.int32", constants={"w": torch.zeros(2, 3, dtype=torch.int32)})
    assert parse_module(text, constants={"w": torch.zeros(2, 3), "unused": torch.ones(1)}) == m


def test_given_constants_override_resources() -> None:
    b = Builder()
    b.ret(b.const("w", torch.zeros(2)))
    m = b.module()
    ones = torch.ones(2)
    back = parse_module(print_module(m, elide_constants=False), constants={"w": ones})
    assert torch.equal(back.constant("w"), ones)


def test_resources_without_header_use_the_const_op_type() -> None:
    b = Builder()
    b.ret(b.const("w", torch.tensor([[1, -2]], dtype=torch.int8), dtype="i4"))
    m = b.module()
    text = print_module(m, elide_constants=False)
    body = text[text.index("module {") :]
    assert parse_module(body) == m
    orphan = body.replace('"w": "0x', '"v": "0x')
    error(orphan, "resource 'v' has no type")


def test_bad_resource_blobs() -> None:
    b = Builder()
    b.ret(b.const("w", torch.zeros(2)))
    text = print_module(b.module(), elide_constants=False)
    error(text.replace('"0x04000000', '"0xZZ'), "hex blob")
    error(text.replace('"0x04000000', '"0x0400'), "holds 6 bytes")
    error(text.replace('"0x04000000', '"0x0400000000'), "holds 9 bytes")
