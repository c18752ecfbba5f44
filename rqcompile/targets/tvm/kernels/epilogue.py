"""The per-block float epilogue of every integer matmul kernel, written once.

Every integer-affine kernel (generic TE, the AVX2 micro-kernels, the column-panel GEMMs for
dense, 2:4 and XNOR weights) computes, per row ``i``, column ``j`` and block ``b`` of K, the
integer dot product ``P = Σ qx·qw`` of the codes, and adds the block's float term of
``Σ x̂·ŵ`` with ``x̂ = xc + xs·qx``, ``ŵ = wc + ws·qw`` (docs/method.md#the-affine-shortcut) to ``y``.

**Origins at the integer zero points.** Each operand is written about an *integer* code
``c`` (its zero point, ``round(-xc/xs)`` clamped to ``[-128, 127]``) and the value there,
``x0 = xc + xs·c``, so ``x̂ = x0 + xs·(qx - c)``. Expanding the product::

    I  = P - cx·S_W - cw·S̃_X            = Σ (qx - cx)(qw - cw)     (integer, exact)
    S̃_X = S_X - B·cx,   S̃_W = S_W - B·cw                         (integer)
    Y += xs·ws·I + x0·(ws·S̃_W) + w0·(xs·S̃_X + B·x0)

Row parts ``(xs, cx, S̃_X, x0, xk = xs·S̃_X + B·x0)`` come from :func:`te_row_parts`
(per call), column parts ``(ws, cw, S_W, wa = ws·S̃_W, w0)`` from :func:`te_col_parts` (at
pack time for packed weights); the float ones are computed in float64 and rounded once.

Why not the block means (the previous *centred* form, ``B·P - S_X·S_W`` and ``B·x̄·w̄``):
when the operands' non-zero values barely meet (2:4 or ternary weights times sparse
activation codes) ``Σ x̂·ŵ`` is ~0 while ``B·x̄·w̄`` is large, and float32 leaves
~ulp(B·x̄·w̄) of it where the reference gives 0. About the zero points every term is a sum of
products of operand values (``|x0| <= |x̂|`` where zero is outside the grid, ``x0 ~ 0``
where it is inside), so the error stays ~1e-7 of ``Σ|x̂||ŵ|``, and disjoint supports give 0
exactly (``test_int_matmul_disjoint_supports_exact_zero``).

``I`` is evaluated in int32 where every integer of its evaluation fits (:func:`int_type`:
8-bit codes up to ``B = 32767``), else in int64. The micro-kernels pass their code bounds
(``f32_bounds``), and where those integers stay within float32's 24-bit mantissa
(:func:`exact_in_f32`: 8-bit codes up to ``B = 256``, sign codes up to ``B = 1008``) ``I`` is
evaluated in float32 instead: exactly the same value, two FMAs instead of two ``vpmulld`` +
two ``vpsubd``, which measured 5-15% of the A1W1 panel kernel at block 128 (the epilogue runs
once per 4 words of K there).

Offset codes fold into the origins: a core that multiplies ``x + 128`` (unsigned operands
of ``vpmaddubsw``/``vpshufb``) passes ``bias_x = 128`` (``cx → cx + 128``); one that
multiplies nibble weights ``w + 8`` passes ``bias_w = 8`` (``cw → cw + 8``,
``S_W → S_W + 8·B``). Both are exact integer identities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import te, tirx

__all__ = [
    "COL_PARTS",
    "ROW_PARTS",
    "block_term",
    "exact_in_f32",
    "f32_row_parts",
    "int_type",
    "split_parts",
    "te_col_parts",
    "te_row_parts",
    "transposed",
    "w_code_max",
]

#: Names of the row-side (activation) parts, ``[..., M, nb]`` each.
ROW_PARTS = ("xs", "cx", "sxt", "x0", "xk")
#: Names of the column-side (weight) parts, ``[..., N, nb]`` each.
COL_PARTS = ("ws", "cw", "sw", "wa", "w0")
_CLAMP = (-128.0, 127.0)
Tensor = Any  # te.Tensor


def _origin(scale: Any, offset: Any) -> Any:
    """``clamp(round(-offset/scale), -128, 127)`` as int32; 0 where the scale is 0 (then
    every code dequantizes to ``offset``, and any origin is exact)."""
    one = tirx.const(1.0, "float32")
    safe = tirx.Select(scale != tirx.const(0.0, "float32"), scale, one)
    z = tirx.max(tirx.min(-offset / safe, tirx.const(_CLAMP[1], "float32")),
                 tirx.const(_CLAMP[0], "float32"))  # fmt: skip
    z = tirx.Select(scale != tirx.const(0.0, "float32"), tirx.nearbyint(z),
                    tirx.const(0.0, "float32"))  # fmt: skip
    return z.astype("int32")


def _f64(e: Any) -> Any:
    return e.astype("float64")


def _at_origin(scale: Tensor, offset: Tensor, c: Tensor, *i: Any) -> Any:
    """``offset + scale·c`` in float64 (exact product, one rounding): the value at the
    origin, ``v0``, before it is rounded to float32."""
    return _f64(offset(*i)) + _f64(scale(*i)) * _f64(c(*i))


def _parts(scale: Tensor, offset: Tensor, sums: Tensor, *, block: int, name: str,
           stage: str) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(c, S̃ = S - B·c, v0 = offset + scale·c)`` per block of one operand."""
    shape = list(scale.shape)
    attrs = {"rq.stage": stage}
    c = te.compute(shape, lambda *i: _origin(scale(*i), offset(*i)), name=f"{name}_c",
                   attrs=attrs)  # fmt: skip
    st = te.compute(shape, lambda *i: sums(*i).astype("int32") - block * c(*i),
                    name=f"{name}_st", attrs=attrs)  # fmt: skip
    v0 = te.compute(shape, lambda *i: _at_origin(scale, offset, c, *i).astype("float32"),
                    name=f"{name}_v0", attrs=attrs)  # fmt: skip
    return c, st, v0


def te_row_parts(xs: Tensor, xc: Tensor, sx: Tensor, *, block: int, name: str) -> list[Tensor]:
    """``[xs, cx, S̃_X, x0, xk]`` (:data:`ROW_PARTS`) from scales, offsets and code sums."""
    cx, sxt, x0 = _parts(xs, xc, sx, block=block, name=f"{name}_x", stage="prep")
    fb = tirx.const(float(block), "float64")
    xk = te.compute(list(xs.shape), lambda *i: (
        _f64(xs(*i)) * _f64(sxt(*i)) + fb * _at_origin(xs, xc, cx, *i)
    ).astype("float32"), name=f"{name}_xk", attrs={"rq.stage": "prep"})  # fmt: skip
    return [xs, cx, sxt, x0, xk]


def split_parts(eps: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """A kernel's epilogue operands, row parts then column parts, as the two lists."""
    n = len(ROW_PARTS)
    return list(eps[:n]), list(eps[n:])


def te_col_parts(ws: Tensor, wc: Tensor, sw: Tensor, *, block: int, name: str,
                 stage: str = "prep") -> list[Tensor]:  # fmt: skip
    """``[ws, cw, S_W, wa, w0]`` (:data:`COL_PARTS`); ``stage="pack"`` when lifted to load."""
    cw, swt, w0 = _parts(ws, wc, sw, block=block, name=f"{name}_w", stage=stage)
    wa = te.compute(list(ws.shape),
                    lambda *i: (_f64(ws(*i)) * _f64(swt(*i))).astype("float32"),
                    name=f"{name}_wa", attrs={"rq.stage": stage})  # fmt: skip
    return [ws, cw, sw, wa, w0]


def transposed(parts: Sequence[Any], name: str, attrs: dict[str, Any]) -> list[Tensor]:
    """``[N, nb]`` parts as ``[nb, N]``: column parts, so 8 columns of a block load as one
    vector; row parts (AMX), so a block's rows lie side by side."""
    return [_transpose(t, _part_name(t, name, "t"), attrs) for t in parts]


def _part_name(t: Tensor, name: str, suffix: str) -> str:
    """``t``'s stage name with ``suffix``, prefixed by the kernel's ``name`` unless it is."""
    base = t.op.name if t.op.name.startswith(name) else f"{name}_{t.op.name}"
    return f"{base}_{suffix}"


def grouped(parts: Sequence[Any], width: int, name: str, attrs: dict[str, Any]) -> list[Tensor]:
    """``[N, nb]`` column parts as ``[N / width, nb, width]``: a panel kernel's column group
    of ``width`` columns reads its parts block after block from one sequential run of
    memory. (Block-major ``[nb, N]``, :func:`transposed`, puts a group's consecutive blocks
    ``4·N`` bytes apart: a GEMV, which reads each part once, then waits on five strided
    streams. At K = N = 4096, M = 1 this layout took the nibble panels from 153 to 129 µs
    and the XNOR panels from 59 to 50: benchmarks/results/panel_kernels_*_grouped_ab.md.)"""
    return [_group(t, width, _part_name(t, name, "g"), attrs) for t in parts]


def col_count(part: Any) -> int:
    """N, the columns of a column part laid out by :func:`grouped` (or ``[nb, N]``)."""
    shape = [int(d) for d in part.shape]
    return shape[0] * shape[2] if len(shape) == 3 else shape[1]


def _group(t: Tensor, width: int, name: str, attrs: dict[str, Any]) -> Tensor:
    n, nb = (int(d) for d in t.shape)
    return te.compute((n // width, nb, width), lambda g, b, j: t[g * width + j, b], name=name,
                      attrs=attrs)  # fmt: skip


def _transpose(t: Tensor, name: str, attrs: dict[str, Any]) -> Tensor:
    return te.compute((t.shape[1], t.shape[0]), lambda b, j: t[j, b], name=name, attrs=attrs)


def _cast(e: Any, base: str) -> Any:
    """``e`` as ``base`` (``int64``, ``float32``...) with ``e``'s lanes."""
    ty = str(e.ty)
    lanes = ty.split("x")[1] if "x" in ty else ""
    want = f"{base}x{lanes}" if lanes else base
    return e if ty == want else tirx.Cast(want, e)


def _largest(block: int, x_max: int, w_max: int, bias_x: int, bias_w: int) -> int:
    """A bound on every product and partial sum of ``(P - cw·S̃_X) - cx·S_W``.

    ``x_max``/``w_max`` bound the true codes' magnitudes; ``bias_x``/``bias_w`` are the
    offsets the core adds (so ``P`` and the folded origins grow by them); origins are
    clamped to ``[-128, 127]``.
    """
    c = 128
    p = block * (x_max + bias_x) * (w_max + bias_w)
    cw_sxt = (c + bias_w) * block * (x_max + c)
    cx_sw = (c + bias_x) * block * (w_max + bias_w)
    return p + cw_sxt + cx_sw


def w_code_max(w_bits: int, w_signed: bool) -> int:
    """Magnitude bound of weight codes as a core multiplies them (nibbles: -8..7 or 0..15,
    else int8): the ``w_max`` of ``f32_bounds``."""
    return (8 if w_signed else 15) if w_bits <= 4 else 128


def exact_in_f32(block: int, x_max: int, w_max: int, bias_x: int = 0, bias_w: int = 0) -> bool:
    """Whether :func:`block_term` can evaluate ``I`` in float32 exactly (every integer of
    the evaluation at most ``2²⁴``, float32's mantissa)."""
    return _largest(block, x_max, w_max, bias_x, bias_w) <= 2**24


def int_type(block: int, x_max: int, w_max: int, bias_x: int = 0, bias_w: int = 0) -> str:
    """``"int32"`` where every integer of ``I``'s evaluation fits it, else ``"int64"``."""
    return "int32" if _largest(block, x_max, w_max, bias_x, bias_w) < 2**31 else "int64"


def f32_row_parts(row: Sequence[Tensor], *, block: int, f32_bounds: tuple[int, int],
                  bias_x: int = 0, bias_w: int = 0, name: str) -> list[Tensor]:  # fmt: skip
    """``row`` with ``cx + bias_x`` and ``S̃_X`` as float32, once per call, where
    :func:`block_term` evaluates ``I`` in float32 (:func:`exact_in_f32`); else ``row`` as is.

    A panel kernel reads each row's parts once per block and tile of columns, so in-kernel
    int-to-float conversions (a scalar ``vcvtsi2ss`` and a register broadcast per part, row
    and block) repeat N/16-N/32 times over; here they run once per row and block, and the
    kernel broadcasts the floats straight from memory. Same values (small integers, exact).
    """
    if not exact_in_f32(block, *f32_bounds, bias_x, bias_w):
        return list(row)
    xs, cx, sxt, x0, xk = row
    attrs = {"rq.stage": "prep"}
    cxf = te.compute(list(cx.shape), lambda *i: (cx(*i) + bias_x).astype("float32"),
                     name=f"{name}_cxf", attrs=attrs)  # fmt: skip
    sxf = te.compute(list(sxt.shape), lambda *i: sxt(*i).astype("float32"),
                     name=f"{name}_sxf", attrs=attrs)  # fmt: skip
    return [xs, cxf, sxf, x0, xk]


def block_term(p: Any, row: Sequence[Any], col: Sequence[Any], *, block: int,
               ity: str = "int32", lanes: int = 1, bias_x: int = 0, bias_w: int = 0,
               f32_bounds: tuple[int, int] | None = None,
               p_affine: tuple[int, int] | None = None, into: Any = None) -> Any:  # fmt: skip
    """Float term of one block: ``xs·ws·I + x0·wa + w0·xk`` (module docstring); with
    ``into``, ``((into + xs·ws·I) + x0·wa) + w0·xk``: the running sum with the three
    products added one by one, three FMAs, one operation fewer per vector than the term
    plus an add (measured faster on the zmm XNOR panels only: benchmarks/xnor_sum_ab.py).

    Row parts from :func:`f32_row_parts` (``cx`` float32, ``bias_x`` already in it) are
    taken as they are: the same ``I``, without the per-use conversions.

    Args:
        p: the block's integer dot product (scalar, or ``int32xL`` over ``L`` columns).
        row: values of :data:`ROW_PARTS` for the row (scalars; broadcast to ``lanes``).
        col: values of :data:`COL_PARTS` for the column(s) (scalars, or ``L``-lane vectors).
        ity: integer type of ``I`` (``int32`` or ``int64``).
        bias_x, bias_w: offsets the core added to ``x`` / ``w`` codes (module docstring).
        f32_bounds: ``(x_max, w_max)``, the codes' magnitude bounds, where the caller allows
            ``I`` in float32 (used when :func:`exact_in_f32` holds; same value either way).
        p_affine: ``(a, b)`` where the core hands ``c`` with ``P = a + b·c`` (the XNOR
            cores: ``c`` the mismatch count, ``P = B - 2c``); in float32 ``a`` starts the
            corrections and ``b·c`` joins them in one FMA, no integer ops on ``c``. Every
            integer on the way is one ``I``'s evaluation already bounds: the same ``I``.
    """
    xs, cx, sxt, x0, xk = (tirx.Broadcast(v, lanes) if lanes > 1 else v for v in row)
    ws, cw, sw, wa, w0 = col
    # packed parts are stored narrow (``cw`` int8, ``S_W`` int16: matmul._packed_col_parts);
    # widened here, explicitly, before any arithmetic
    cw, sw = _cast(cw, "int32"), _cast(sw, "int32")
    row_f32 = str(cx.ty).startswith("float32")
    if row_f32 and not (f32_bounds is not None
                        and exact_in_f32(block, *f32_bounds, bias_x, bias_w)):  # fmt: skip
        raise NumericsError("block_term: float32 row parts (f32_row_parts) need the float32 "
                            "evaluation of I; pass the f32_bounds they were made with.")
    if bias_x and not row_f32:
        cx = cx + bias_x
    if bias_w:
        cw, sw = cw + bias_w, sw + bias_w * block
    if f32_bounds is not None and exact_in_f32(block, *f32_bounds, bias_x, bias_w):
        f = lambda e: _cast(e, "float32")  # noqa: E731
        if p_affine is None:
            i = (f(p) - f(cw) * f(sxt)) - f(cx) * f(sw)
        else:
            a, b = (tirx.const(float(v), "float32") for v in p_affine)
            i = ((a - f(cw) * f(sxt)) - f(cx) * f(sw)) + f(p) * b
    else:
        if p_affine is not None:
            p = p_affine[0] + _cast(p, ity) * p_affine[1]
        i = _cast(p, ity) - _cast(cw, ity) * _cast(sxt, ity) - _cast(cx, ity) * _cast(sw, ity)
    if into is not None:
        return ((into + xs * ws * _cast(i, "float32")) + x0 * wa) + w0 * xk
    return xs * ws * _cast(i, "float32") + x0 * wa + w0 * xk
