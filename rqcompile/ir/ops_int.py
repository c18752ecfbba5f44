"""Integer-side ops of the catalogue: constants, activation quantization and integer matmuls.

Shape letters: ``M`` rows, ``K`` reduction length, ``N`` outputs, ``nb = K // block`` blocks
per row; ``...`` is any number of leading dims. A ``None`` (``?``) dim matches anything and
propagates. Importing this module registers the ops (``rqcompile.ir.ops`` does it for you).

The block-affine convention shared by every integer matmul: block ``b`` of a row holds codes
``q`` with real value ``scale_b * q + offset_b``. For ``X ≈ xs⊙Xq + xc`` and
``W ≈ ws⊙Wq + wc`` the product over one block splits into one integer matmul plus rank-1
corrections, which the kernels add up over blocks::

    Y = Σ_b  xs_b·ws_bᵀ ⊙ P_b            # P_b = Xq_b @ Wq_bᵀ, exact in int32
           + xc_b·(ws_b ⊙ wsum_b)ᵀ       # wsum_b = per-row code sums of Wq_b (precomputed)
           + (xs_b ⊙ S_X,b)·wc_bᵀ        # S_X,b = per-row code sums of Xq_b (run time)
           + block · xc_b·wc_bᵀ
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rqcompile.ir.ops import (
    AttrSpec,
    Dims,
    defop,
    div_dim,
    expect_type,
    fail,
    mul_dim,
    unify_dims,
)
from rqcompile.ir.types import DTYPES, TensorType

__all__: list[str] = []  # registers ops; nothing to import from here

Attrs = Mapping[str, Any]  # already checked against the op's schema
Types = tuple[TensorType, ...]

_BITS = (1, 1.5, 2, 3, 4, 5, 6, 7, 8)
_BLOCK = AttrSpec(int)


def _check_block(attrs: Attrs) -> int:
    block = attrs["block"]
    if block <= 0:
        fail(f"block={block} must be positive")
    return int(block)


def _check_w_bits(attrs: Attrs) -> int:
    w_bits = attrs["w_bits"]
    if not 1 <= w_bits <= 8:
        fail(f"w_bits={w_bits} must be in 1..8")
    return int(w_bits)


def _verify_const(ts: Types, attrs: Attrs) -> None:
    if not attrs["name"]:
        fail("name must be non-empty")
    if any(d < -1 for d in attrs["shape"]):
        fail(f"shape={attrs['shape']} may only hold sizes >= 0 or -1 (dynamic)")


@defop(
    "rq.const",
    (),
    attrs={
        "name": AttrSpec(str),
        "shape": AttrSpec(tuple, elem=int),
        "dtype": AttrSpec(str, choices=DTYPES),
    },
    verify=_verify_const,
)
def _const(ts: Types, attrs: Attrs) -> Types:
    """Module constant ``name`` (a weight); -1 in ``shape`` is a dynamic dim."""
    shape = tuple(None if d == -1 else d for d in attrs["shape"])
    return (TensorType(shape, attrs["dtype"]),)


def _verify_quantize(ts: Types, attrs: Attrs) -> None:
    bits = attrs["bits"]
    if bits not in _BITS:
        fail(f"bits={bits!r} must be 1, 1.5 or 2..8")
    if bits == 1.5 and attrs["symmetric"] is not True:
        fail("bits=1.5 (ternary) requires symmetric=true")
    _check_block(attrs)
    if not attrs["ridge_lambda"] >= 0:
        fail(f"ridge_lambda={attrs['ridge_lambda']} must be >= 0")


@defop(
    "rq.quantize",
    ("x",),
    attrs={
        "bits": AttrSpec((int, float)),
        "symmetric": AttrSpec(bool),
        "block": _BLOCK,
        "estimator": AttrSpec(str),
        "ridge_lambda": AttrSpec(float),
        "pack": AttrSpec(str, default="none", choices=("none", "bits32")),
    },
    verify=_verify_quantize,
)
def _quantize(ts: Types, attrs: Attrs) -> Types:
    """Dynamic block quantization of activations: x ≈ scale*code + offset per block."""
    (x,) = ts
    expect_type(x, "x", dtypes=("f32",), min_rank=1)
    *lead, k = x.shape
    nb = div_dim(k, _check_block(attrs), "K (last dim of x) by block")
    if attrs["pack"] == "bits32":
        if attrs["bits"] != 1:
            fail(f"pack='bits32' needs bits=1, got bits={attrs['bits']}")
        codes = TensorType((*lead, div_dim(k, 32, "K (last dim of x) for pack='bits32'")), "ui32")
    else:
        codes = TensorType(x.shape, "i8")
    stats = TensorType((*lead, nb), "f32")
    return codes, stats, stats


def _weight_side(env: Dims, ts: Types, names: tuple[str, str, str]) -> None:
    """Match ``ws, wc: f32[N, nb]`` and ``wsum: i32[N, nb]``."""
    ws, wc, wsum = ts
    env.match(ws, names[0], ("N", "nb"), "f32")
    env.match(wc, names[1], ("N", "nb"), "f32")
    env.match(wsum, names[2], ("N", "nb"), "i32")


def _x_side(env: Dims, xs: TensorType, xc: TensorType) -> None:
    env.match(xs, "xs", ("M", "nb"), "f32")
    env.match(xc, "xc", ("M", "nb"), "f32")


def _weight_codes(env: Dims, wq: TensorType, w_bits: int, block: int) -> None:
    """Bind N, K and nb from integer weight codes: i8[N, K], or two nibbles per ui8 byte
    (``[N, K/2]``) when ``w_bits <= 4``."""
    if w_bits > 4:
        env.match(wq, "wq", ("N", "K"), "i8")
    else:
        env.match(wq, "wq", ("N", "K/2"), "ui8")
        env.bind("K", mul_dim(env["K/2"], 2), f"wq {wq} (K/2 bytes per row)")
        div_dim(env["K"], 2, "K for two nibbles per byte")
    env.bind("nb", div_dim(env["K"], block, "K by block"), "K // block")


@defop(
    "rq.int_matmul",
    ("xq", "xs", "xc", "wq", "ws", "wc", "wsum"),
    attrs={"block": _BLOCK, "w_bits": AttrSpec(int), "w_signed": AttrSpec(bool)},
)
def _int_matmul(ts: Types, attrs: Attrs) -> Types:
    """Block-affine integer matmul; wq is i8[N,K] (w_bits > 4) or two nibbles per ui8 byte."""
    xq, xs, xc, wq, ws, wc, wsum = ts
    block, w_bits = _check_block(attrs), _check_w_bits(attrs)
    env = Dims()
    env.match(xq, "xq", ("M", "K"), "i8")
    _weight_codes(env, wq, w_bits, block)
    _x_side(env, xs, xc)
    _weight_side(env, (ws, wc, wsum), ("ws", "wc", "wsum"))
    return (TensorType((env["M"], env["N"]), "f32"),)


@defop(
    "rq.wo_matmul",
    ("x", "wq", "ws", "wc"),
    attrs={"block": _BLOCK, "w_bits": AttrSpec(int), "w_signed": AttrSpec(bool)},
)
def _wo_matmul(ts: Types, attrs: Attrs) -> Types:
    """Weight-only matmul ``x @ (ws⊙Wq + wc)ᵀ``: float x, integer weight codes stored as for
    ``rq.int_matmul`` (i8[N,K], or two nibbles per ui8 byte when w_bits <= 4)."""
    x, wq, ws, wc = ts
    block, w_bits = _check_block(attrs), _check_w_bits(attrs)
    env = Dims()
    env.match(x, "x", ("M", "K"), "f32")
    _weight_codes(env, wq, w_bits, block)
    env.match(ws, "ws", ("N", "nb"), "f32")
    env.match(wc, "wc", ("N", "nb"), "f32")
    return (TensorType((env["M"], env["N"]), "f32"),)


@defop(
    "rq.xnor_popcount_matmul",
    ("xbits", "xs", "xc", "wbits", "ws", "wc", "wsum"),
    attrs={"block": _BLOCK, "k": AttrSpec(int)},
)
def _xnor(ts: Types, attrs: Attrs) -> Types:
    """Binary matmul on sign bits packed 32 per ui32 word, via XNOR and popcount."""
    xbits, xs, xc, wbits, ws, wc, wsum = ts
    block, k = _check_block(attrs), attrs["k"]
    if k <= 0 or k % 32:
        fail(f"k={k} must be a positive multiple of 32")
    env = Dims()
    env.bind("K/32", k // 32, "k")
    env.bind("nb", div_dim(k, block, "k by block"), "k // block")
    env.match(xbits, "xbits", ("M", "K/32"), "ui32")
    env.match(wbits, "wbits", ("N", "K/32"), "ui32")
    _x_side(env, xs, xc)
    _weight_side(env, (ws, wc, wsum), ("ws", "wc", "wsum"))
    return (TensorType((env["M"], env["N"]), "f32"),)


@defop(
    "rq.sparse24_matmul",
    ("xq", "xs", "xc", "wvals", "widx", "ws", "wc", "wsum"),
    attrs={"block": _BLOCK, "w_bits": AttrSpec(int)},
)
def _sparse24(ts: Types, attrs: Attrs) -> Types:
    """2:4-sparse matmul: two kept i8 codes per 4 weights plus two 2-bit indices (ui8)."""
    xq, xs, xc, wvals, widx, ws, wc, wsum = ts
    block = _check_block(attrs)
    _check_w_bits(attrs)
    env = Dims()
    env.match(xq, "xq", ("M", "K"), "i8")
    env.match(wvals, "wvals", ("N", "K/2"), "i8")
    env.match(widx, "widx", ("N", "K/8"), "ui8")
    k = unify_dims(env["K"], mul_dim(env["K/2"], 2), "K of xq vs wvals (K/2 per row)")
    k = unify_dims(k, mul_dim(env["K/8"], 8), "K vs widx (K/8 bytes per row)")
    env.bind("K", k, "K")
    div_dim(k, 8, "K for 2:4 index packing")
    env.bind("nb", div_dim(k, block, "K by block"), "K // block")
    _x_side(env, xs, xc)
    _weight_side(env, (ws, wc, wsum), ("ws", "wc", "wsum"))
    return (TensorType((env["M"], env["N"]), "f32"),)


@defop("rq.qbmm", ("aq", "as", "ac", "bq", "bs", "bc"), attrs={"block": _BLOCK})
def _qbmm(ts: Types, attrs: Attrs) -> Types:
    """Batched activation x activation block-affine matmul, A[..., M, K] @ B[..., N, K]ᵀ."""
    aq, as_, ac, bq, bs, bc = ts
    block = _check_block(attrs)
    expect_type(aq, "aq", dtypes=("i8",), min_rank=3)
    batch = tuple(f"B{i}" for i in range(aq.rank - 2))
    env = Dims()
    env.match(aq, "aq", (*batch, "M", "K"), "i8")
    env.match(bq, "bq", (*batch, "N", "K"), "i8")
    env.bind("nb", div_dim(env["K"], block, "K by block"), "K // block")
    for t, name in ((as_, "as"), (ac, "ac")):
        env.match(t, name, (*batch, "M", "nb"), "f32")
    for t, name in ((bs, "bs"), (bc, "bc")):
        env.match(t, name, (*batch, "N", "nb"), "f32")
    return (TensorType((*(env[b] for b in batch), env["M"], env["N"]), "f32"),)
