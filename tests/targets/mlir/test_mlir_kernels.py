"""Each integer kernel exported alone (as integer linalg) runs bit-exact against its oracle.

Scales are powers of two and offsets multiples of 1/8, so every float64 term of the epilogue
is exact and the float32 result cannot depend on summation order: ``torch.equal`` then
checks the integer semantics (unpacking, core, code sums, corrections) exactly. A second case
with arbitrary floats checks the epilogue to float32 rounding.
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("torch_mlir", reason="torch-mlir not installed: pip install 'rqcompile[mlir]'")

from rqcompile.ir import Builder, Loc, TensorType
from rqcompile.targets.mlir import export_mlir, parse_mlir, run_mlir
from rqcompile.quant.bitpack import pack_nibbles, pack_signs, pack_sparse24
from rqcompile.targets.reference import KERNELS


def _module(opname: str, args: list[torch.Tensor], **attrs: object) -> object:
    b = Builder()
    vals = [b.arg(TensorType.of(t)) for t in args]
    b.ret(b.op(opname, *vals, loc=Loc("k"), **attrs))  # type: ignore[arg-type]
    return b.module()


def _params(g: torch.Generator, rows: tuple[int, ...], dyadic: bool) -> list[torch.Tensor]:
    if dyadic:
        scale = 2.0 ** torch.randint(-4, 3, rows, generator=g).float()
        offset = torch.randint(-8, 9, rows, generator=g).float() / 8
    else:
        scale = torch.rand(rows, generator=g) * 0.3 + 0.01
        offset = torch.randn(rows, generator=g) * 0.1
    return [scale, offset]


def _wsum(codes: torch.Tensor, block: int) -> torch.Tensor:
    return codes.to(torch.int32).reshape(*codes.shape[:-1], -1, block).sum(-1).to(torch.int32)


def _case(kind: str, dyadic: bool, seed: int = 0) -> tuple[str, list[torch.Tensor], dict]:
    g = torch.Generator().manual_seed(seed)
    m, n, k, block = 3, 5, 64, 32
    nb = k // block
    if kind == "qbmm":
        aq = torch.randint(-128, 128, (2, m, k), generator=g, dtype=torch.int8)
        bq = torch.randint(-128, 128, (2, n, k), generator=g, dtype=torch.int8)
        return (
            "rq.qbmm",
            [aq, *_params(g, (2, m, nb), dyadic), bq, *_params(g, (2, n, nb), dyadic)],
            {"block": block},
        )
    xq = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    xs, xc = _params(g, (m, nb), dyadic)
    ws, wc = _params(g, (n, nb), dyadic)
    if kind.startswith("nibble"):
        signed = kind == "nibble_signed"
        lo, hi = (-8, 8) if signed else (0, 16)
        w = torch.randint(lo, hi, (n, k), generator=g, dtype=torch.int8)
        wq = pack_nibbles(w, signed=signed)
        return (
            "rq.int_matmul",
            [xq, xs, xc, wq, ws, wc, _wsum(w, block)],
            {"block": block, "w_bits": 4, "w_signed": signed},
        )
    if kind == "int8":
        w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        return (
            "rq.int_matmul",
            [xq, xs, xc, w, ws, wc, _wsum(w, block)],
            {"block": block, "w_bits": 8, "w_signed": True},
        )
    if kind == "xnor":
        k, block = 128, 64
        x = torch.randint(0, 2, (m, k), generator=g) * 2 - 1
        w = torch.randint(0, 2, (n, k), generator=g) * 2 - 1
        xs, xc = _params(g, (m, 2), dyadic)
        ws, wc = _params(g, (n, 2), dyadic)
        return (
            "rq.xnor_popcount_matmul",
            [pack_signs(x), xs, xc, pack_signs(w), ws, wc, _wsum(w, block)],
            {"block": block, "k": k},
        )
    assert kind == "sparse24"
    w = torch.randint(-7, 8, (n, k // 4, 4), generator=g)
    keep = torch.rand(n, k // 4, 4, generator=g).argsort(-1) < 2  # 2 random slots per group
    w = (w * keep).reshape(n, k)  # some groups have < 2 non-zeros (code 0 kept)
    vals, idx = pack_sparse24(w)
    return (
        "rq.sparse24_matmul",
        [xq, xs, xc, vals, idx, ws, wc, _wsum(w, block)],
        {"block": block, "w_bits": 4},
    )


KINDS = ["nibble_signed", "nibble_unsigned", "int8", "xnor", "sparse24", "qbmm"]


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_exact(kind: str) -> None:
    opname, args, attrs = _case(kind, dyadic=True)
    text = export_mlir(_module(opname, args, **attrs))
    (y,) = run_mlir(text, *args)
    ref = KERNELS[opname](tuple(args), attrs)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("kind", ["nibble_signed", "xnor", "sparse24", "qbmm"])
def test_kernel_float_epilogue(kind: str) -> None:
    opname, args, attrs = _case(kind, dyadic=False, seed=1)
    (y,) = run_mlir(export_mlir(_module(opname, args, **attrs)), *args)
    ref = KERNELS[opname](tuple(args), attrs)
    torch.testing.assert_close(y, ref, rtol=2e-7, atol=1e-6 * float(ref.abs().max()))


_CONTRACT = r"linalg\.contract indexing_maps = \[[^]]*\] ins\([^)]*: {}, {}\) outs\([^)]*: {}\)"


@pytest.mark.parametrize(
    "kind, patterns",
    [
        (
            "nibble_signed",
            [
                "arith.shrsi",
                _CONTRACT.format("tensor<3x2x32xi8>", "tensor<5x2x32xi8>", "tensor<3x5x2xi32>"),
            ],
        ),
        ("xnor", ["arith.xori", "math.ctpop", r"outs\([^)]*: tensor<3x5x2xi32>\)"]),
        ("sparse24", [r"tensor.extract %\w+\[", "arith.shrui"]),
        (
            "qbmm",
            [_CONTRACT.format("tensor<2x3x2x32xi8>", "tensor<2x5x2x32xi8>", "tensor<2x3x5x2xi32>")],
        ),
    ],
)
def test_kernel_is_integer_linalg(kind: str, patterns: list[str]) -> None:
    """The integer core is i8/i32 linalg (not a float matmul), and the text re-parses."""
    opname, args, attrs = _case(kind, dyadic=True)
    text = export_mlir(_module(opname, args, **attrs))
    for pattern in patterns:
        assert re.search(pattern, text), pattern
    assert "torch." not in text and "linalg.matmul" not in text
    assert str(parse_mlir(text)) == text


@pytest.mark.parametrize("name", ["text", "export"])
def test_doctests(name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(f"rqcompile.targets.mlir.{name}")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
