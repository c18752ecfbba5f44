"""TE computes for the integer ops: quantize, integer-affine, XNOR-popcount, 2:4 sparse, qbmm,
and the weight-only matmul (float x, integer weight codes: ``wo_matmul.py``).

This module is the package's front: it re-exports the builders of ``common.py`` (names,
:func:`prim_func`), ``quantize.py``, ``cores.py`` (GEMM cores per block) and ``matmul.py``
(fused and packed matmuls), so ``from rqcompile.targets.tvm.kernels import integer as K``
reaches every builder.

Each builder takes TE tensors (placeholders, or the tensors ``relax.BlockBuilder.emit_te``
hands in) and returns TE tensors, so the same code serves standalone kernels
(:func:`prim_func`) and the relax emitter. Semantics are those of
:mod:`rqcompile.quant.reference` (the oracle), storage layouts those of
:mod:`rqcompile.quant.bitpack`; a test checks each against the other:

* integer cores are **bit-exact** (int32 arithmetic, exact for the documented block sizes);
* float epilogues agree to ~1e-6 relative to the output's magnitude (float32 here, float64
  in the reference);
* :func:`te_quantize` codes are bit-exact: the grid is computed with the same float32
  operations as ``primitives.grid`` (binary/ternary means accumulated in float64 and
  rounded once, as there), ``z = (x - b)/s`` in float32, rounding half-to-even with
  ``tirx.nearbyint`` (``round`` would be half-away-from-zero). Ridge statistics are summed
  in float64, so ``scale``/``offset`` are as accurate as torch's float32 means or better.

**Epilogue.** The integer-affine shortcut is one integer GEMM plus rank-1 corrections per
block (docs/method.md#the-affine-shortcut). Every kernel evaluates it with each operand written about its
integer zero point (:mod:`.epilogue`, shared by all of them)::

    I[i,j,b] = P - cx·S_W - cw·(S_X - B·cx)                   (integer, exact)
    Y[i,j]   = Σ_b xs·ws·I + x0·ws·(S_W - B·cw) + w0·(xs·(S_X - B·cx) + B·x0)

which equals the reference's four-term sum exactly in real arithmetic, and in float32 stays
within ~1e-7 of ``Σ|x̂||ŵ|``; operands whose non-zero values never meet give exactly 0, as
the reference does (``test_int_matmul_disjoint_supports_exact_zero``). ``I`` is computed in
int32 where it fits (``epilogue.int_type``: 8-bit codes up to ``B = 32767``), else in int64.

**Finding kernels.** Every output block carries the annotation ``rq.kernel`` (the op kind);
internal blocks carry ``rq.stage`` (``core``, ``sums``, ``prep``, ``grid``, ``codes`` ...).
:func:`prim_func` also sets the PrimFunc attributes ``rq.kernel`` and ``rq.block``;
schedules look for either.
"""

from __future__ import annotations

from rqcompile.targets.tvm.kernels.common import KERNEL_ATTR, KERNELS, STAGE_ATTR, prim_func
from rqcompile.targets.tvm.kernels.cores import (
    te_code_sums,
    te_int_matmul_core,
    te_sparse24_core,
    te_xnor_popcount_core,
)
from rqcompile.targets.tvm.kernels.matmul import (
    int_matmul_packs,
    narrow_x_offset,
    sparse24_dense_packs,
    sparse24_packs,
    te_pack_sparse24_dense,
    te_sparse24_dense_packed,
    te_int_matmul,
    te_int_matmul_packed,
    te_pack_int_matmul_weights,
    te_pack_sparse24_weights,
    te_pack_xnor_weights,
    te_qbmm,
    te_sparse24_matmul,
    te_sparse24_matmul_packed,
    te_xnor_popcount_matmul,
    te_xnor_popcount_matmul_packed,
    xnor_packs,
)
from rqcompile.targets.tvm.kernels.quantize import te_quantize
from rqcompile.targets.tvm.kernels.wo_matmul import (
    te_pack_wo_weights,
    te_wo_matmul,
    te_wo_matmul_packed,
    wo_packs,
)

__all__ = [
    "KERNELS",
    "KERNEL_ATTR",
    "STAGE_ATTR",
    "int_matmul_packs",
    "narrow_x_offset",
    "prim_func",
    "sparse24_dense_packs",
    "sparse24_packs",
    "te_pack_sparse24_dense",
    "te_sparse24_dense_packed",
    "te_code_sums",
    "te_int_matmul",
    "te_int_matmul_core",
    "te_int_matmul_packed",
    "te_pack_int_matmul_weights",
    "te_pack_sparse24_weights",
    "te_pack_xnor_weights",
    "te_qbmm",
    "te_quantize",
    "te_pack_wo_weights",
    "te_sparse24_core",
    "te_sparse24_matmul",
    "te_sparse24_matmul_packed",
    "te_xnor_popcount_core",
    "te_xnor_popcount_matmul",
    "te_wo_matmul",
    "te_wo_matmul_packed",
    "te_xnor_popcount_matmul_packed",
    "wo_packs",
    "xnor_packs",
]
