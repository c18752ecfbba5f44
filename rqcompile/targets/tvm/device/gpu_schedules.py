"""GPU-style schedules (``blockIdx``/``threadIdx``) shared by every device target.

Where it sits: ``device/lower.py`` calls :func:`schedule_device_module` on the legalized
relax module's PrimFuncs before TIR lowering. The same schedule serves CUDA, OpenCL and
Metal: only the code generator differs, so a kernel that runs exact under OpenCL here
exercises the index arithmetic the CUDA kernel uses.

* **rq matmul kernels** (``int_matmul``, ``xnor_popcount_matmul``, ``sparse24_matmul``,
  ``qbmm``; found by the ``rq.kernel``/``rq.stage`` annotations of ``kernels/integer.py``): one
  thread per output element ``Y[.., i, j]``. The block-wise integer core ``P[.., i, j, :]``
  is computed inside that thread (``compute_at``) into a ``local`` (register) array of
  ``nb`` int32 accumulators, then the epilogue reduces it over blocks in the reference's
  order. XNOR's ``2·popcount - B`` fix-up is inlined. Popcount is TVM's ``popcount``
  intrinsic (``__popc`` in CUDA, ``popcount`` in OpenCL).
* **everything else** (quantize stages, code sums, float ops legalized to TOPI): each root
  block gets its data-parallel loops fused into one loop split over ``blockIdx.x`` ×
  ``threadIdx.x``; reductions run sequentially inside the thread, so numerics equal the
  CPU kernels' (same reduction order per element).

Correct first: this is the simple-thread version (no shared-memory tiling, no tensor
cores / dp4a tensorization; see docs/targets.md for what is and isn't done).
"""

from __future__ import annotations

from typing import Any

from rqcompile.targets.tvm.adapter import s_tir, tvm
from rqcompile.targets.tvm.kernels.integer import STAGE_ATTR
from rqcompile.targets.tvm.schedules.integer import kernel_kind

__all__ = ["DEFAULT_THREADS", "schedule_device_func", "schedule_device_module"]

#: Threads per block when the target says nothing else.
DEFAULT_THREADS = 64
_DATA_PAR = int(tvm.tirx.IterVar.DataPar)
_FUSED_KINDS = ("int_matmul", "xnor_popcount_matmul", "sparse24_matmul", "qbmm", "wo_matmul")


def _blocks(sch: Any) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _stage(sch: Any, block: Any) -> str | None:
    ann = sch.get(block).annotations
    return str(ann[STAGE_ATTR]) if STAGE_ATTR in ann else None


def _is_bound(sch: Any, block: Any) -> bool:
    return any(sch.get(lp).thread_binding is not None for lp in sch.get_loops(block))


def _bind_flat(sch: Any, block: Any, threads: int) -> Any:
    """Fuse ``block``'s leading data-parallel loops and bind them; returns the thread loop."""
    loops = sch.get_loops(block)
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    nsp = 0  # leading data-parallel loops (create_prim_func orders spatial before reduce)
    while nsp < min(len(loops), len(kinds)) and kinds[nsp] == _DATA_PAR:
        nsp += 1
    if nsp == 0:  # a scalar result (a reduction to one value): one thread computes it
        outer = sch.add_unit_loop(block)
    else:
        outer = sch.fuse(*loops[:nsp]) if nsp > 1 else loops[0]
    extent = int(sch.get(outer).extent)
    bo, ti = sch.split(outer, [None, min(threads, max(extent, 1))])
    sch.bind(bo, "blockIdx.x")
    sch.bind(ti, "threadIdx.x")
    return ti


def _schedule_matmul(sch: Any, threads: int) -> None:
    for blk in [b for b in _blocks(sch) if _stage(sch, b) == "core_out"]:
        sch.compute_inline(blk)  # xnor: 2·popcount - block, read straight from the core
    out = next(b for b in _blocks(sch) if _stage(sch, b) == "epilogue")
    core = next(b for b in _blocks(sch) if _stage(sch, b) == "core")
    loops = sch.get_loops(out)
    outer = sch.fuse(*loops[:-1])  # (*batch, i, j); the last loop is the reduction over b
    extent = int(sch.get(outer).extent)
    bo, ti = sch.split(outer, [None, min(threads, extent)])
    sch.bind(bo, "blockIdx.x")
    sch.bind(ti, "threadIdx.x")
    sch.compute_at(core, ti, preserve_unit_loops=True)
    sch.set_scope(core, 0, "local")


def schedule_device_func(func: Any, threads: int = DEFAULT_THREADS) -> Any:
    """``func`` with every root block bound to ``blockIdx.x``/``threadIdx.x``.

    Already-bound blocks are left alone, so this is idempotent.
    """
    sch = s_tir.Schedule(func)
    if kernel_kind(func) in _FUSED_KINDS:
        _schedule_matmul(sch, threads)
    for blk in _blocks(sch):
        if not _is_bound(sch, blk):
            _bind_flat(sch, blk, threads)
    return sch.mod["main"]


def schedule_device_module(mod: Any, threads: int = DEFAULT_THREADS) -> Any:
    """Schedule every PrimFunc of ``mod`` (rq kernels and TOPI float code alike)."""
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    for gvar, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            new[gvar] = schedule_device_func(func, threads)
    return new
