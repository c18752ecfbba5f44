"""Op registry and shape inference of every op in the catalogue, including error cases."""

from __future__ import annotations

from typing import Any

import pytest

from rqcompile.errors import VerifyError
from rqcompile.ir import Builder, Loc, TensorType, all_ops, defop, get_op, register_op
from rqcompile.ir import ops as ops_mod
from rqcompile.ir.ops import AttrSpec, OpDef, broadcast_shapes


def T(text: str) -> TensorType:
    """Shorthand: T("?x4xf32") is tensor<?x4xf32>."""
    return TensorType.parse(f"tensor<{text}>")


def infer(opname: str, /, *types: str, **attrs: Any) -> tuple[str, ...]:
    opdef = get_op(opname)
    full = opdef.with_defaults(
        {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}
    )
    return tuple(str(t)[7:-1] for t in opdef.result_types(tuple(T(t) for t in types), full))


Q = {"symmetric": False, "estimator": "ridge", "ridge_lambda": 0.01}

CATALOGUE = {
    "rq.const", "rq.quantize", "rq.int_matmul", "rq.xnor_popcount_matmul", "rq.sparse24_matmul",
    "rq.qbmm", "rq.linear", "rq.add", "rq.sub", "rq.mul", "rq.div", "rq.add_scalar",
    "rq.mul_scalar", "rq.matmul", "rq.layer_norm", "rq.rms_norm", "rq.softmax", "rq.gelu",
    "rq.relu", "rq.silu", "rq.tanh", "rq.sigmoid", "rq.embedding", "rq.reshape", "rq.permute",
    "rq.slice", "rq.concat", "rq.causal_mask", "rq.sdpa", "rq.conv2d", "rq.im2col",
    "rq.max_pool2d", "rq.adaptive_avg_pool2d", "rq.mean", "rq.cast",
}  # fmt: skip


def test_catalogue_is_registered() -> None:
    names = {o.name for o in all_ops()}
    assert names >= CATALOGUE
    assert [o.name for o in all_ops()] == sorted(names)
    assert all(o.summary for o in all_ops() if o.name in CATALOGUE)


# (op, operand types, attrs, expected result types)
CASES: list[tuple[str, tuple[str, ...], dict[str, Any], tuple[str, ...]]] = [
    ("rq.const", (), {"name": "w", "shape": (4, 8), "dtype": "i8"}, ("4x8xi8",)),
    ("rq.const", (), {"name": "w", "shape": (-1, 8), "dtype": "f32"}, ("?x8xf32",)),
    ("rq.const", (), {"name": "s", "shape": (), "dtype": "f32"}, ("f32",)),
    # quantize
    (
        "rq.quantize",
        ("?x256xf32",),
        {"bits": 4, "block": 128, **Q},
        ("?x256xi8", "?x2xf32", "?x2xf32"),
    ),
    (
        "rq.quantize",
        ("2x3x64xf32",),
        {"bits": 1.5, "block": 64, **Q, "symmetric": True},
        ("2x3x64xi8", "2x3x1xf32", "2x3x1xf32"),
    ),
    ("rq.quantize", ("?x?xf32",), {"bits": 8, "block": 32, **Q}, ("?x?xi8", "?x?xf32", "?x?xf32")),
    (
        "rq.quantize",
        ("8x256xf32",),
        {"bits": 1, "block": 128, **Q, "pack": "bits32"},
        ("8x8xui32", "8x2xf32", "8x2xf32"),
    ),
    (
        "rq.quantize",
        ("?x?xf32",),
        {"bits": 1, "block": 128, **Q, "pack": "bits32"},
        ("?x?xui32", "?x?xf32", "?x?xf32"),
    ),
    # int_matmul: i8 weights for w_bits > 4, nibble-packed ui8 otherwise
    (
        "rq.int_matmul",
        ("8x256xi8", "8x2xf32", "8x2xf32", "64x256xi8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 8, "w_signed": True},
        ("8x64xf32",),
    ),
    (
        "rq.int_matmul",
        ("?x256xi8", "?x2xf32", "?x2xf32", "64x128xui8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 4, "w_signed": False},
        ("?x64xf32",),
    ),
    (
        "rq.int_matmul",
        ("?x?xi8", "?x?xf32", "?x?xf32", "64x128xui8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 2, "w_signed": True},
        ("?x64xf32",),
    ),
    # wo_matmul: float x, weight codes stored as for int_matmul
    (
        "rq.wo_matmul",
        ("?x256xf32", "64x128xui8", "64x2xf32", "64x2xf32"),
        {"block": 128, "w_bits": 4, "w_signed": False},
        ("?x64xf32",),
    ),
    (
        "rq.wo_matmul",
        ("8x256xf32", "64x256xi8", "64x2xf32", "64x2xf32"),
        {"block": 128, "w_bits": 8, "w_signed": True},
        ("8x64xf32",),
    ),
    # xnor: k is the unpacked reduction length
    (
        "rq.xnor_popcount_matmul",
        ("8x8xui32", "8x2xf32", "8x2xf32", "64x8xui32", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "k": 256},
        ("8x64xf32",),
    ),
    (
        "rq.xnor_popcount_matmul",
        ("?x8xui32", "?x1xf32", "?x1xf32", "?x8xui32", "?x1xf32", "?x1xf32", "?x1xi32"),
        {"block": 256, "k": 256},
        ("?x?xf32",),
    ),
    (
        "rq.sparse24_matmul",
        (
            "4x64xi8",
            "4x1xf32",
            "4x1xf32",
            "16x32xi8",
            "16x8xui8",
            "16x1xf32",
            "16x1xf32",
            "16x1xi32",
        ),
        {"block": 64, "w_bits": 4},
        ("4x16xf32",),
    ),
    (
        "rq.sparse24_matmul",
        (
            "?x?xi8",
            "?x2xf32",
            "?x2xf32",
            "16x32xi8",
            "16x8xui8",
            "16x2xf32",
            "16x2xf32",
            "16x2xi32",
        ),
        {"block": 32, "w_bits": 1},
        ("?x16xf32",),
    ),
    (
        "rq.qbmm",
        ("2x5x64xi8", "2x5x2xf32", "2x5x2xf32", "2x7x64xi8", "2x7x2xf32", "2x7x2xf32"),
        {"block": 32},
        ("2x5x7xf32",),
    ),
    (
        "rq.qbmm",
        ("?x4x?x16xi8", "?x4x?x1xf32", "?x4x?x1xf32", "?x4x?x16xi8", "?x4x?x1xf32", "?x4x?x1xf32"),
        {"block": 16},
        ("?x4x?x?xf32",),
    ),
    # float ops
    ("rq.linear", ("?x7x16xf32", "10x16xf32"), {}, ("?x7x10xf32",)),
    ("rq.linear", ("16xf32", "10x16xf32"), {}, ("10xf32",)),
    ("rq.linear", ("?x?xf32", "10x16xf32"), {}, ("?x10xf32",)),
    ("rq.add", ("?x64xf32", "64xf32"), {}, ("?x64xf32",)),
    ("rq.sub", ("4x1x3xf32", "5x1xf32"), {}, ("4x5x3xf32",)),
    ("rq.mul", ("?x1xf32", "1x8xf32"), {}, ("?x8xf32",)),
    ("rq.div", ("?xf32", "4xf32"), {}, ("4xf32",)),
    ("rq.add", ("?xf32", "1xf32"), {}, ("?xf32",)),
    ("rq.add", ("f32", "2x3xf32"), {}, ("2x3xf32",)),
    ("rq.add", ("0x3xf32", "1x3xf32"), {}, ("0x3xf32",)),
    ("rq.add_scalar", ("?x3xf32",), {"value": 1.0}, ("?x3xf32",)),
    ("rq.mul_scalar", ("f32",), {"value": -0.5}, ("f32",)),
    ("rq.matmul", ("3xf32", "3xf32"), {}, ("f32",)),
    ("rq.matmul", ("3xf32", "3x4xf32"), {}, ("4xf32",)),
    ("rq.matmul", ("2x3xf32", "3xf32"), {}, ("2xf32",)),
    ("rq.matmul", ("5x2x3xf32", "3x4xf32"), {}, ("5x2x4xf32",)),
    ("rq.matmul", ("?x1x2x3xf32", "6x3x4xf32"), {}, ("?x6x2x4xf32",)),
    ("rq.matmul", ("3xf32", "7x3x4xf32"), {}, ("7x4xf32",)),
    ("rq.matmul", ("?x?xf32", "?x?xf32"), {}, ("?x?xf32",)),
    ("rq.layer_norm", ("?x8x16xf32", "16xf32", "16xf32"), {}, ("?x8x16xf32",)),
    ("rq.layer_norm", ("2x8x16xf32", "8x16xf32", "8x16xf32"), {"eps": 1e-6}, ("2x8x16xf32",)),
    ("rq.rms_norm", ("?x?xf32", "16xf32"), {"eps": 1e-6}, ("?x?xf32",)),
    ("rq.softmax", ("?x4xf32",), {"axis": -1}, ("?x4xf32",)),
    ("rq.gelu", ("3xf32",), {}, ("3xf32",)),
    ("rq.gelu", ("3xf32",), {"approximate": "tanh"}, ("3xf32",)),
    ("rq.relu", ("?xf32",), {}, ("?xf32",)),
    ("rq.silu", ("f32",), {}, ("f32",)),
    ("rq.tanh", ("2x2xf32",), {}, ("2x2xf32",)),
    ("rq.sigmoid", ("2x2xf32",), {}, ("2x2xf32",)),
    ("rq.embedding", ("?x?xi64", "100x32xf32"), {}, ("?x?x32xf32",)),
    ("rq.embedding", ("i32", "100x32xf32"), {}, ("32xf32",)),
    ("rq.reshape", ("2x3x4xi8",), {"shape": (6, -1)}, ("6x4xi8",)),
    ("rq.reshape", ("?x16xf32",), {"shape": (-1, 4, 4)}, ("?x4x4xf32",)),
    ("rq.reshape", ("?x16xf32",), {"shape": (8, 2)}, ("8x2xf32",)),
    ("rq.reshape", ("0x4xf32",), {"shape": (0, 8)}, ("0x8xf32",)),
    ("rq.reshape", ("f32",), {"shape": (1, 1)}, ("1x1xf32",)),
    ("rq.reshape", ("1x1xf32",), {"shape": ()}, ("f32",)),
    ("rq.permute", ("?x3x4xf32",), {"dims": (2, 0, 1)}, ("4x?x3xf32",)),
    ("rq.permute", ("2x3xi32",), {"dims": (-1, 0)}, ("3x2xi32",)),
    ("rq.slice", ("?x10xf32",), {"axis": 1, "start": 2, "stop": 8}, ("?x6xf32",)),
    ("rq.slice", ("10xf32",), {"axis": 0, "start": 0, "stop": 100, "step": 3}, ("4xf32",)),
    ("rq.slice", ("10xf32",), {"axis": -1, "start": -3, "stop": 2**63 - 1}, ("3xf32",)),
    ("rq.slice", ("10xf32",), {"axis": 0, "start": 8, "stop": 2}, ("0xf32",)),
    ("rq.slice", ("?x10xf32",), {"axis": 0, "start": 0, "stop": 4}, ("?x10xf32",)),
    ("rq.concat", ("?x3xf32", "?x5xf32"), {"axis": 1}, ("?x8xf32",)),
    ("rq.concat", ("2x3xi8", "?x3xi8", "4x3xi8"), {"axis": 0}, ("?x3xi8",)),
    ("rq.concat", ("?x3xf32", "4x?xf32"), {"axis": -1}, ("4x?xf32",)),
    ("rq.concat", ("2x3xf32",), {"axis": 0}, ("2x3xf32",)),
    ("rq.causal_mask", ("?x4x6xf32",), {}, ("?x4x6xf32",)),
    (
        "rq.sdpa",
        ("?x4x8x16xf32", "?x4x10x16xf32", "?x4x10x32xf32"),
        {"scale": 0.25},
        ("?x4x8x32xf32",),
    ),
    ("rq.sdpa", ("?x16xf32", "5x16xf32", "?x?xf32"), {"scale": 0.25, "causal": True}, ("?x?xf32",)),
    ("rq.conv2d", ("1x3x32x32xf32", "8x3x3x3xf32"), {}, ("1x8x30x30xf32",)),
    (
        "rq.conv2d",
        ("?x4x?x17xf32", "8x2x3x3xf32"),
        {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 2), "groups": 2},
        ("?x8x?x8xf32",),
    ),
    ("rq.im2col", ("1x5x5x3xf32",), {"kernel": (3, 3)}, ("1x3x3x27xf32",)),
    (
        "rq.im2col",
        ("?x8x8x4xi8",),
        {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)},
        ("?x4x4x36xi8",),
    ),
    ("rq.max_pool2d", ("?x3x8x8xf32",), {"kernel": (2, 2), "stride": (2, 2)}, ("?x3x4x4xf32",)),
    (
        "rq.max_pool2d",
        ("3x7x7xf32",),
        {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)},
        ("3x4x4xf32",),
    ),
    ("rq.adaptive_avg_pool2d", ("?x3x?x?xf32",), {"output_size": (1, 1)}, ("?x3x1x1xf32",)),
    ("rq.mean", ("?x4x5xf32",), {"axes": (1,)}, ("?x5xf32",)),
    ("rq.mean", ("?x4x5xf32",), {"axes": (-1, 1), "keepdim": True}, ("?x1x1xf32",)),
    ("rq.mean", ("4xf32",), {"axes": (0,)}, ("f32",)),
    ("rq.cast", ("?x4xi32",), {"dtype": "f32"}, ("?x4xf32",)),
    # ops added for convert (rqcompile/ir/ops_more.py)
    ("rq.masked_fill", ("?x4x4xf32", "4x4xi1"), {"value": -1e9}, ("?x4x4xf32",)),
    ("rq.logical", ("2x1x8xi1", "1x5x8xi1"), {"fn": "and"}, ("2x5x8xi1",)),
    ("rq.logical_not", ("?x8xi1",), {}, ("?x8xi1",)),
    ("rq.compare", ("3x8xi64", "8xi64"), {"fn": "ge"}, ("3x8xi1",)),
    ("rq.where", ("4x1xi1", "4x6xf32", "6xf32"), {}, ("4x6xf32",)),
    ("rq.repeat_blocks", ("?x2xf32",), {"factor": 4}, ("?x8xf32",)),
    ("rq.repeat_blocks", ("?x?xf32",), {"factor": 4}, ("?x?xf32",)),
    ("rq.rsqrt", ("?x4xf32",), {}, ("?x4xf32",)),
    ("rq.pow_scalar", ("?x4xf32",), {"exponent": 3.0}, ("?x4xf32",)),
    ("rq.broadcast_to", ("2x1x3x1xf32",), {"shape": (2, 4, 3, 5)}, ("2x4x3x5xf32",)),
    ("rq.broadcast_to", ("3x1xi8",), {"shape": (2, 3, 4)}, ("2x3x4xi8",)),
    ("rq.take", ("32x64xf32", "1xi64"), {"axis": 0}, ("1x64xf32",)),
    ("rq.take", ("2x4x16x32xi1", "3xi32"), {"axis": -1}, ("2x4x16x3xi1",)),
    ("rq.cache_write", ("1x12x64x16xf32", "1x12x64x1xf32", "1xi64"), {"axis": 3},
     ("1x12x64x16xf32",)),
    ("rq.cache_write", ("3x2x16x8xf32", "3x2x1x8xf32", "3xi64"), {"axis": -2},
     ("3x2x16x8xf32",)),
    ("rq.cache_attention", ("1x12x1x64xf32", "1x12x64x16xf32", "1x12x16x32xf32", "1xi64"),
     {"scale": 0.125, "key_axis": -1}, ("1x12x1x32xf32",)),
    ("rq.cache_attention", ("3x2x1x8xf32", "3x2x16x8xf32", "3x2x16x8xf32", "3xi32"),
     {"scale": 0.5, "key_axis": -2}, ("3x2x1x8xf32",)),
    # static twins of dynamic cases above, also checked against torch below
    ("rq.softmax", ("2x4xf32",), {"axis": 0}, ("2x4xf32",)),
    ("rq.embedding", ("2x3xi64", "10x4xf32"), {}, ("2x3x4xf32",)),
    ("rq.mean", ("3x4x5xf32",), {"axes": (0, 2)}, ("4xf32",)),
    ("rq.linear", ("3x16xf32", "10x16xf32"), {}, ("3x10xf32",)),
    (
        "rq.sdpa",
        ("2x8x16xf32", "2x10x16xf32", "2x10x32xf32"),
        {"scale": 0.25, "causal": True},
        ("2x8x32xf32",),
    ),
    ("rq.permute", ("2x3x4xf32",), {"dims": (2, 0, 1)}, ("4x2x3xf32",)),
]


@pytest.mark.parametrize(("name", "types", "attrs", "expected"), CASES)
def test_infer(
    name: str, types: tuple[str, ...], attrs: dict[str, Any], expected: tuple[str, ...]
) -> None:
    assert infer(name, *types, **attrs) == expected


def test_every_ir_op_has_an_inference_case() -> None:
    declared_here = {o.name for o in all_ops() if o.infer.__module__.startswith("rqcompile.ir.")}
    assert declared_here >= CATALOGUE
    assert {c[0] for c in CASES} == declared_here


ERRORS: list[tuple[str, tuple[str, ...], dict[str, Any], str]] = [
    ("rq.const", (), {"name": "", "shape": (1,), "dtype": "f32"}, "non-empty"),
    ("rq.const", (), {"name": "w", "shape": (-2,), "dtype": "f32"}, ">= 0 or -1"),
    ("rq.const", (), {"name": "w", "shape": (1,), "dtype": "f64"}, "attribute 'dtype'"),
    ("rq.quantize", ("?x256xi8",), {"bits": 4, "block": 128, **Q}, "expected element type f32"),
    ("rq.quantize", ("?x100xf32",), {"bits": 4, "block": 128, **Q}, "not divisible by 128"),
    ("rq.quantize", ("?x128xf32",), {"bits": 9, "block": 128, **Q}, "bits=9"),
    ("rq.quantize", ("?x128xf32",), {"bits": 2.5, "block": 128, **Q}, "bits=2.5"),
    ("rq.quantize", ("?x128xf32",), {"bits": True, "block": 128, **Q}, "attribute 'bits'"),
    ("rq.quantize", ("?x128xf32",), {"bits": 1.5, "block": 128, **Q}, "ternary"),
    ("rq.quantize", ("?x128xf32",), {"bits": 4, "block": 0, **Q}, "block=0"),
    ("rq.quantize", ("?x128xf32",), {"bits": 4, "block": 128, **Q, "ridge_lambda": -1.0}, ">= 0"),
    ("rq.quantize", ("?x128xf32",), {"bits": 4, "block": 128, **Q, "pack": "bits32"}, "bits=1"),
    ("rq.quantize", ("?x48xf32",), {"bits": 1, "block": 16, **Q, "pack": "bits32"}, "by 32"),
    ("rq.quantize", ("?x128xf32",), {"bits": 1, "block": 128, **Q, "pack": "zip"}, "'pack'"),
    ("rq.quantize", ("f32",), {"bits": 4, "block": 128, **Q}, "rank >= 1"),
    (
        "rq.int_matmul",
        ("8x256xi8", "8x2xf32", "8x2xf32", "64x256xi8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 4, "w_signed": True},
        "ui8",
    ),
    (
        "rq.wo_matmul",
        ("8x256xf32", "64x128xui8", "64x4xf32", "64x4xf32"),
        {"block": 128, "w_bits": 4, "w_signed": False},
        "nb",
    ),
    ("rq.wo_matmul", ("8x256xi8", "64x128xui8", "64x2xf32", "64x2xf32"),
     {"block": 128, "w_bits": 4, "w_signed": False}, "f32"),
    (
        "rq.int_matmul",
        ("8x256xi8", "8x2xf32", "8x2xf32", "64x100xui8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 4, "w_signed": True},
        "K = 200",
    ),
    (
        "rq.int_matmul",
        ("8x256xi8", "8x4xf32", "8x2xf32", "64x256xi8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 8, "w_signed": True},
        "nb = 4",
    ),
    (
        "rq.int_matmul",
        ("8x256xi8", "8x2xf32", "8x2xf32", "64x256xi8", "64x2xf32", "64x2xf32", "64x2xf32"),
        {"block": 128, "w_bits": 8, "w_signed": True},
        "wsum",
    ),
    (
        "rq.int_matmul",
        ("8x256xi8", "8x2xf32", "8x2xf32", "64x256xi8", "32x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 8, "w_signed": True},
        "N = 64",
    ),
    (
        "rq.int_matmul",
        ("8x256xi8", "8x2xf32", "8x2xf32", "64x256xi8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 9, "w_signed": True},
        "w_bits=9",
    ),
    (
        "rq.int_matmul",
        ("2x8x256xi8", "8x2xf32", "8x2xf32", "64x256xi8", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "w_bits": 8, "w_signed": True},
        "rank 2",
    ),
    (
        "rq.xnor_popcount_matmul",
        ("8x8xui32", "8x2xf32", "8x2xf32", "64x8xui32", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "k": 200},
        "multiple of 32",
    ),
    (
        "rq.xnor_popcount_matmul",
        ("8x4xui32", "8x2xf32", "8x2xf32", "64x8xui32", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "k": 256},
        "K/32 = 4",
    ),
    (
        "rq.xnor_popcount_matmul",
        ("8x8xi8", "8x2xf32", "8x2xf32", "64x8xui32", "64x2xf32", "64x2xf32", "64x2xi32"),
        {"block": 128, "k": 256},
        "ui32",
    ),
    (
        "rq.sparse24_matmul",
        (
            "4x64xi8",
            "4x1xf32",
            "4x1xf32",
            "16x32xi8",
            "16x4xui8",
            "16x1xf32",
            "16x1xf32",
            "16x1xi32",
        ),
        {"block": 64, "w_bits": 4},
        "widx",
    ),
    (
        "rq.sparse24_matmul",
        ("4x12xi8", "4x1xf32", "4x1xf32", "16x6xi8", "?x?xui8", "16x1xf32", "16x1xf32", "16x1xi32"),
        {"block": 12, "w_bits": 4},
        "by 8",
    ),
    (
        "rq.qbmm",
        ("5x64xi8", "5x2xf32", "5x2xf32", "7x64xi8", "7x2xf32", "7x2xf32"),
        {"block": 32},
        "rank >= 3",
    ),
    (
        "rq.qbmm",
        ("2x5x64xi8", "2x5x2xf32", "2x5x2xf32", "3x7x64xi8", "3x7x2xf32", "3x7x2xf32"),
        {"block": 32},
        "B0 = 3",
    ),
    ("rq.linear", ("?x15xf32", "10x16xf32"), {}, "K = 15"),
    ("rq.linear", ("?x16xi8", "10x16xf32"), {}, "f32"),
    ("rq.add", ("?x3xf32", "4xf32"), {}, "do not broadcast"),
    ("rq.add", ("3xf32", "3xi32"), {}, "f32"),
    ("rq.matmul", ("2x3xf32", "4x5xf32"), {}, "3 != 4"),
    ("rq.matmul", ("2x2x3xf32", "3x3x4xf32"), {}, "broadcast"),
    ("rq.matmul", ("f32", "3xf32"), {}, "rank >= 1"),
    ("rq.layer_norm", ("?x16xf32", "8xf32", "8xf32"), {}, "16 != 8"),
    ("rq.layer_norm", ("16xf32", "2x16xf32", "2x16xf32"), {}, "more dims"),
    ("rq.rms_norm", ("?x16xf32", "16xf32"), {}, "missing attribute 'eps'"),
    ("rq.softmax", ("?x4xf32",), {"axis": 2}, "out of range"),
    ("rq.gelu", ("3xf32",), {"approximate": "fast"}, "'approximate'"),
    ("rq.relu", ("3xi8",), {}, "f32"),
    ("rq.embedding", ("4xf32", "10x3xf32"), {}, "i64"),
    ("rq.reshape", ("2x3xf32",), {"shape": (4, -1)}, "cannot reshape"),
    ("rq.reshape", ("2x3xf32",), {"shape": (5,)}, "6 elements"),
    ("rq.reshape", ("2x3xf32",), {"shape": (-1, -1)}, "at most one -1"),
    ("rq.reshape", ("0x3xf32",), {"shape": (0, -1)}, "cannot reshape"),
    ("rq.permute", ("2x3xf32",), {"dims": (0, 0)}, "not a permutation"),
    ("rq.permute", ("2x3xf32",), {"dims": (0,)}, "1 entries"),
    ("rq.slice", ("10xf32",), {"axis": 0, "start": 0, "stop": 2, "step": 0}, "step=0"),
    ("rq.slice", ("10xf32",), {"axis": 1, "start": 0, "stop": 2}, "out of range"),
    ("rq.concat", ("2x3xf32", "2x4xf32"), {"axis": 0}, "3 != 4"),
    ("rq.concat", ("2x3xf32", "2x3xi8"), {"axis": 0}, "element type"),
    ("rq.concat", (), {"axis": 0}, "at least 1"),
    ("rq.causal_mask", ("4xf32",), {}, "rank >= 2"),
    ("rq.sdpa", ("4x8x16xf32", "4x10x16xf32", "4x11x32xf32"), {"scale": 0.25}, "S = 11"),
    ("rq.sdpa", ("4x8x16xf32", "4x10x16xf32", "4x10x32xf32"), {}, "missing attribute 'scale'"),
    ("rq.conv2d", ("1x3x32x32xf32", "8x4x3x3xf32"), {}, "C = 3"),
    ("rq.conv2d", ("1x4x32x32xf32", "6x1x3x3xf32"), {"groups": 4}, "not divisible"),
    ("rq.conv2d", ("1x3x2x2xf32", "8x3x3x3xf32"), {}, "output size"),
    ("rq.conv2d", ("1x3x8x8xf32", "8x3x3x3xf32"), {"stride": (0, 1)}, "stride"),
    ("rq.conv2d", ("1x3x8x8xf32", "8x3x3x3xf32"), {"stride": (1, 1, 1)}, "length 3"),
    ("rq.im2col", ("1x5x5x3xi32",), {"kernel": (3, 3)}, "f32 or i8"),
    ("rq.im2col", ("1x3x5x5xf32",), {"kernel": (3, 3), "padding": (-1, 0)}, "padding"),
    (
        "rq.max_pool2d",
        ("1x3x8x8xf32",),
        {"kernel": (2, 2), "stride": (2, 2), "padding": (2, 2)},
        "half of kernel",
    ),
    ("rq.max_pool2d", ("8x8xf32",), {"kernel": (2, 2), "stride": (2, 2)}, "N, C, H, W"),
    ("rq.adaptive_avg_pool2d", ("1x3x8x8xf32",), {"output_size": (0, 1)}, "output_size"),
    ("rq.mean", ("2x3xf32",), {"axes": ()}, "non-empty"),
    ("rq.mean", ("2x3xf32",), {"axes": (1, -1)}, "distinct"),
    ("rq.cast", ("2xf32",), {"dtype": "f16"}, "'dtype'"),
    ("rq.broadcast_to", ("2x3xf32",), {"shape": (3,)}, "fewer dims"),
    ("rq.broadcast_to", ("2x3xf32",), {"shape": (2, 4)}, "cannot be broadcast"),
    ("rq.rsqrt", ("2xi8",), {}, "f32"),
    ("rq.take", ("4x4xf32", "1xf32"), {"axis": 0}, "i64 or i32"),
    ("rq.take", ("4x4xf32", "1x1xi64"), {"axis": 0}, "rank 1"),
    ("rq.take", ("4x4xf32", "1xi64"), {"axis": 2}, "out of range"),
    ("rq.cache_write", ("2x16x8xf32", "2x2x8xf32", "2xi64"), {"axis": 1}, "size 1 along axis 1"),
    ("rq.cache_write", ("2x16x8xf32", "2x1x8xf32", "3xi64"), {"axis": 1}, "one per row of axis 0"),
    ("rq.cache_write", ("16x8xf32", "1x8xf32", "2xi64"), {"axis": 0}, "batch on axis 0"),
    ("rq.cache_attention", ("2x2x8xf32", "2x8x16xf32", "2x16x8xf32", "1xi64"),
     {"scale": 1.0, "key_axis": -1}, "one query row"),
    ("rq.cache_attention", ("2x1x8xf32", "2x16x8xf32", "2x16x8xf32", "1xi64"),
     {"scale": 1.0, "key_axis": -1}, "does not match"),
    ("rq.relu", ("2xf32", "2xf32"), {}, "takes 1 operand"),
    ("rq.relu", ("2xf32",), {"alpha": 1.0}, "unexpected attribute 'alpha'"),
    ("rq.add_scalar", ("2xf32",), {"value": 1}, "has type int, expected float"),
]


@pytest.mark.parametrize(("name", "types", "attrs", "match"), ERRORS)
def test_infer_errors(name: str, types: tuple[str, ...], attrs: dict[str, Any], match: str) -> None:
    with pytest.raises(VerifyError, match=match.replace("(", r"\(").replace(")", r"\)")):
        infer(name, *types, **attrs)


def test_broadcast_shapes_dynamic() -> None:
    assert broadcast_shapes((None, 1), (1, None)) == (None, None)
    assert broadcast_shapes((None,), (5,)) == (5,)
    assert broadcast_shapes((), (2, None)) == (2, None)


def test_attr_spec_describe_and_check() -> None:
    spec = AttrSpec(str, default="none", choices=("none", "tanh"))
    assert not spec.required
    assert spec.describe() == "str in {'none', 'tanh'}"
    assert spec.check("tanh") is None
    assert "expected" in (spec.check("fast") or "")
    ints = AttrSpec(tuple, elem=int)
    assert ints.check((1, 2)) is None
    assert "wrong type" in (ints.check((1, 2.0)) or "")
    assert "wrong type" in (ints.check((True,)) or "")
    assert AttrSpec((int, float)).check(True) is not None


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_op(OpDef("rq.relu", ("x",), lambda ts, a: ts))


def test_unknown_op_suggests_close_names() -> None:
    with pytest.raises(VerifyError, match=r"Did you mean 'rq\.relu'"):
        get_op("rq.rleu")


def test_only_last_operand_may_be_variadic() -> None:
    with pytest.raises(ValueError, match="variadic"):
        OpDef("test.bad", ("xs*", "y"), lambda ts, a: ts)


def test_register_a_new_op_and_build_with_it() -> None:
    name = "test.scale_rows"

    @defop(name, ("x", "s*"), attrs={"alpha": AttrSpec(float, default=1.0)})
    def _infer(ts: tuple[TensorType, ...], attrs: Any) -> tuple[TensorType, ...]:
        """x * s... * alpha."""
        return (ts[0],)

    try:
        assert get_op(name).summary == "x * s... * alpha."
        assert get_op(name).variadic
        b = Builder()
        x = b.arg(TensorType((2,), "f32"))
        y = b.op(name, x, x, x, loc=Loc("l"))
        with pytest.raises(VerifyError, match="at least 2"):
            b.op(name, x)
        b.ret(y)
        (op,) = b.module().main.ops
        assert op.attrs == (("alpha", 1.0),)
    finally:
        ops_mod._REGISTRY.pop(name)


def _torch_ref(name: str, xs: list[Any], a: dict[str, Any]) -> tuple[int, ...]:
    """Output shape of the torch function each float op mirrors."""
    import torch
    import torch.nn.functional as F

    if name == "rq.im2col":
        x = xs[0].permute(0, 3, 1, 2)
        cols = F.unfold(x, a["kernel"], a["dilation"], a["padding"], a["stride"])
        n, h = xs[0].shape[:2]
        kh = a["kernel"][0]
        ho = (h + 2 * a["padding"][0] - a["dilation"][0] * (kh - 1) - 1) // a["stride"][0] + 1
        assert cols.shape[-1] % ho == 0
        return (n, ho, cols.shape[-1] // ho, cols.shape[1])
    if name == "rq.slice":
        index = (slice(None),) * (a["axis"] % xs[0].dim()) + (
            slice(a["start"], a["stop"], a["step"]),
        )
        return tuple(xs[0][index].shape)
    fns: dict[str, Any] = {
        "rq.linear": lambda: F.linear(*xs),
        "rq.add": lambda: torch.add(*xs),
        "rq.sub": lambda: torch.sub(*xs),
        "rq.mul": lambda: torch.mul(*xs),
        "rq.div": lambda: torch.div(*xs),
        "rq.matmul": lambda: torch.matmul(*xs),
        "rq.layer_norm": lambda: F.layer_norm(xs[0], xs[1].shape, xs[1], xs[2], a["eps"]),
        "rq.softmax": lambda: torch.softmax(xs[0], a["axis"]),
        "rq.embedding": lambda: F.embedding(*xs),
        "rq.reshape": lambda: xs[0].reshape(a["shape"]),
        "rq.permute": lambda: xs[0].permute(a["dims"]),
        "rq.concat": lambda: torch.cat(xs, a["axis"]),
        "rq.sdpa": lambda: F.scaled_dot_product_attention(
            *xs, is_causal=a["causal"], scale=a["scale"]
        ),
        "rq.conv2d": lambda: F.conv2d(
            xs[0], xs[1], None, a["stride"], a["padding"], a["dilation"], a["groups"]
        ),
        "rq.max_pool2d": lambda: F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"]),
        "rq.adaptive_avg_pool2d": lambda: F.adaptive_avg_pool2d(xs[0], a["output_size"]),
        "rq.mean": lambda: xs[0].mean(dim=a["axes"], keepdim=a["keepdim"]),
        "rq.broadcast_to": lambda: xs[0].expand(a["shape"]),
        "rq.take": lambda: torch.index_select(xs[0], a["axis"], xs[1].long()),
    }
    return tuple(fns[name]().shape)


TORCH_CASES = [
    c for c in CASES
    if all("?" not in t for t in c[1])
    and c[0] in {"rq.linear", "rq.add", "rq.sub", "rq.mul", "rq.div", "rq.matmul", "rq.layer_norm",
                 "rq.softmax", "rq.embedding", "rq.reshape", "rq.permute", "rq.slice", "rq.concat",
                 "rq.sdpa", "rq.conv2d", "rq.max_pool2d", "rq.adaptive_avg_pool2d", "rq.mean",
                 "rq.im2col", "rq.broadcast_to", "rq.take"}
]  # fmt: skip


@pytest.mark.parametrize(("name", "types", "attrs", "expected"), TORCH_CASES)
def test_static_inference_matches_torch(
    name: str, types: tuple[str, ...], attrs: dict[str, Any], expected: tuple[str, ...]
) -> None:
    import torch

    from rqcompile.ir.types import torch_dtype

    xs = [torch.zeros(T(t).shape, dtype=torch_dtype(T(t).dtype)) for t in types]  # type: ignore[arg-type]
    full = get_op(name).with_defaults(attrs)
    (want,) = expected
    assert T(want).shape == _torch_ref(name, xs, dict(full))
