"""Weight-only matmul ``rq.wo_matmul`` (``W4``/``W8``): float x times integer weight codes.

``te_wo_matmul`` is the generic TE compute (any target, any shape): a per-block core
``P[i, j, b] = Σ_{k∈b} x·q`` (codes unpacked from the stored bytes and converted to float),
per-block row sums ``Σ_{k∈b} x``, and the epilogue ``Y = Σ_b ws·P + wc·Σx``: the block scale
is applied once per block, never per weight. It has the stage names of the integer matmuls
(``core``, ``sums``, ``epilogue``), so ``schedules/integer.py`` tiles it the same way.

On x86 targets the kernel table's rows run the panel kernel of :mod:`x86.wo` on weights
packed once at load (:func:`te_pack_wo_weights`, :func:`te_wo_matmul_packed`), where
:func:`wo_packs` allows. Semantics: ``quant.reference.wo_matmul``; results agree to float32
rounding (the reference sums in float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.targets.tvm.adapter import te, tirx
from rqcompile.targets.tvm.kernels.common import STAGE_ATTR, Tensor, _attrs, _pack_attrs, _shape, _stage
from rqcompile.targets.tvm.x86.wo import (
    WO_ISAS,
    te_pack_wo_panels,
    wo_panel_matmul,
    wo_panel_supported,
)

__all__ = ["te_pack_wo_weights", "te_wo_matmul", "te_wo_matmul_packed", "wo_packs"]


def _code(wq: Tensor, j: Any, k: Any, *, w_bits: int, w_signed: bool) -> Any:
    """Weight code ``(j, k)`` as float32 from the stored bytes (``reference.wo_matmul``)."""
    if w_bits > 4:
        return wq[j, k].astype("float32")
    v = wq[j, k // 2].astype("int32")
    if w_signed:
        lo, hi = (v << 28) >> 28, (v << 24) >> 28
    else:
        lo, hi = v & 15, v >> 4
    return tirx.Select(k % 2 == 1, hi, lo).astype("float32")


def te_wo_matmul(
    x: Tensor, wq: Tensor, ws: Tensor, wc: Tensor, *, block: int, w_bits: int,
    w_signed: bool, isa: str = "generic", name: str = "wo_matmul",
) -> Tensor:  # fmt: skip
    """``f32 [M, N]``: the generic kernel (module docstring). ``isa`` names the caller's
    row; unpacked weights always take this compute."""
    del isa
    m, k = _shape(x)
    n, nb = _shape(ws)
    a = _attrs("wo_matmul", block, w_bits=int(w_bits), w_signed=bool(w_signed))
    r = te.reduce_axis((0, block), name="r")
    p = te.compute((m, n, nb), lambda i, j, b: te.sum(
        x[i, b * block + r] * _code(wq, j, b * block + r, w_bits=w_bits, w_signed=w_signed),
        axis=r), name=f"{name}_p", attrs=_stage("core"))  # fmt: skip
    rs = te.reduce_axis((0, block), name="rs")
    xsum = te.compute((m, nb), lambda i, b: te.sum(x[i, b * block + rs], axis=rs),
                      name=f"{name}_xsum", attrs=_stage("sums"))  # fmt: skip
    rb = te.reduce_axis((0, nb), name="b")
    return te.compute((m, n), lambda i, j: te.sum(
        ws[j, rb] * p[i, j, rb] + wc[j, rb] * xsum[i, rb], axis=rb), name=name,
        attrs={**a, STAGE_ATTR: "epilogue"})  # fmt: skip


def wo_packs(x_shape: Sequence[int], n: int, *, block: int, w_bits: int, isa: str,
             **_: Any) -> bool:  # fmt: skip
    """Whether ``rq.wo_matmul`` runs as pack + panel kernel (:mod:`x86.wo`) on ``isa``."""
    return (isa in WO_ISAS and len(x_shape) == 2
            and wo_panel_supported(n=n, k=int(x_shape[-1]), block=block, w_bits=w_bits,
                                   isa=isa))  # fmt: skip


def te_pack_wo_weights(
    wq: Tensor, ws: Tensor, wc: Tensor, *, block: int, w_bits: int, w_signed: bool, isa: str,
    name: str = "pack_weights",
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Weight-only prep of the panel kernel, lifted out of ``main``: ``(wp, ws_t, wc_t)``."""
    return te_pack_wo_panels(wq, ws, wc, block=block, w_bits=w_bits, isa=isa, name=name,
                             attrs=_pack_attrs(block), w_signed=bool(w_signed))  # fmt: skip


def te_wo_matmul_packed(
    x: Tensor, wp: Tensor, ws_t: Tensor, wc_t: Tensor, *, block: int, w_bits: int,
    w_signed: bool, isa: str, name: str = "wo_matmul",
) -> Tensor:  # fmt: skip
    """``te_wo_matmul`` on packed weights (:func:`te_pack_wo_weights`, same ``isa``)."""
    a = _attrs("wo_matmul", block, w_bits=int(w_bits), w_signed=bool(w_signed))
    return wo_panel_matmul(x, wp, ws_t, wc_t, block=block, w_bits=w_bits, w_signed=w_signed,
                           isa=isa, name=name, attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip
