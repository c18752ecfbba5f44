"""CPU schedules (``tvm.s_tir``) for the kernels of :mod:`rqcompile.targets.tvm.kernels.integer`.

Correct first, then sensible. Every matmul-like kernel is a *core* block (the block-wise
int32 GEMM ``P[.., i, j, b]``) feeding an *epilogue* block (``Y[.., i, j]``, reducing over
blocks ``b``). The schedule:

1. tiles the epilogue's ``(i, j)`` into ``tile_m x tile_n`` register tiles, and fuses the
   batch and tile loops into one parallel loop;
2. computes the core at the tile (``compute_at``), so the int32 block accumulator of one
   tile (``tile_m·tile_n·nb`` ints) lives in a small local buffer and never goes to memory;
3. orders the core's loops ``(b, r, ii, jj)`` with the tile loops unrolled, so the innermost
   real loop is the reduction over K inside a block with ``tile_m·tile_n`` independent
   accumulators; LLVM's loop vectorizer turns it into packed sign-extend + multiply + add
   (``x`` is reused ``tile_n`` times, ``w`` ``tile_m`` times);
4. parallelizes the small per-row/per-block stages (code sums, block means) over rows.

Kernels are found by annotation, not by name: the PrimFunc attribute or block annotation
``rq.kernel`` picks the schedule, ``rq.stage`` names the blocks (see ``kernels/integer.py``).
Schedules never change numerics: integer cores stay bit-exact, and the epilogue keeps its
reduction order over blocks.

Integer-affine, 2:4 and A1W1 (XNOR-popcount) matmuls on AVX2 targets do not use these
loops: :func:`kernel_options` makes the emitter build them as hand-written micro-kernels,
whose block carries ``rq.stage = "micro"``; the schedule then only parallelizes the small TE
stages around it. Affine and 2:4 kernels run on weights packed once at load
(:mod:`x86.panel`; :mod:`x86.micro` for shapes the panels do not fit); the
packing (``rq.kernel = "pack_weights"``) runs once, in ``main_transform_params``. A1W1 runs
on packed sign-word panels too, with ``vpshufb`` LUT or ``vpopcntd`` popcounts
(:mod:`x86.xnor_panel`; :mod:`x86.xnor` where N % 8 != 0). Affine ridge/STE
activation quantization is one micro-kernel too (:mod:`x86.quant`, a lone
``te.extern`` stage: its function has no root block). Integer-affine matmuls on targets with
AVX-512 VNNI or AVX-VNNI run ``vpdpbusd`` panels instead (:mod:`x86.vnni`, proven
bit-exact on AVX2 hosts through its exact emulation), and on targets with AMX-INT8 those of
16 rows or more run ``tdpbusd`` tiles (:mod:`x86.amx`). Other targets, and shapes the
micro-kernels do not take, keep the generic TE kernels below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rqcompile.errors import TargetError
from rqcompile.targets.tvm.adapter import (
    Target,
    llvm_features,
    make_target,
    s_tir,
    target_features,
    tvm,
)
from rqcompile.targets.tvm.kernels.integer import KERNEL_ATTR, KERNELS, STAGE_ATTR
from rqcompile.targets.tvm.kernels.table import CPU_KERNELS

__all__ = [
    "SCHEDULED_ATTR",
    "CpuScheduleConfig",
    "cpu_dot_path",
    "kernel_kind",
    "kernel_options",
    "schedule_module",
    "schedule_prim_func",
    "schedule_row_stages",
]

#: PrimFunc attribute set on scheduled functions (so scheduling is idempotent).
SCHEDULED_ATTR = "rq.scheduled"
_CPU_KINDS = ("llvm", "c")
_REDUCE = int(tvm.tirx.IterVar.CommReduce)


@dataclass(frozen=True, kw_only=True)
class CpuScheduleConfig:
    """Tile sizes of the CPU matmul schedule (clamped to divisors of the actual shape).

    Measured on Zen 3 (AVX2, one thread) at M=64, N=K=1024, block 128: 2x4 and 4x4 tiles
    take ~3.3 ms, 2x2 / 2x8 / 4x2 ~4 ms, 1x8 ~5.8 ms, the unscheduled kernel ~15 ms.
    """

    tile_m: int = 4
    tile_n: int = 4
    parallel: bool = True
    #: vector width (float32 lanes) of elementwise stages; False on targets without vector
    #: types (TVM's C backend prints ``float4``, which C lacks)
    vectorize: bool = True
    lanes: int = 8
    #: partial sums per reduction over a quantization block (``_schedule_quantize``):
    #: 8 float64 lanes measured 10-25% faster than 4 on Zen 3 (two AVX2 vectors in flight)
    reduce_lanes: int = 8


def cpu_dot_path(target: Target | Mapping[str, Any] | str) -> str:
    """The dot-product instruction family the target offers (detected, never assumed).

    Returns one of ``"avx512_vnni"``, ``"avx_vnni"``, ``"avx2"``, ``"generic"``;
    :func:`kernel_options` maps it to the kernels' ``isa``.
    """
    feats = target_features(target)
    for path in ("avx512_vnni", "avx_vnni", "avx2"):
        if path in feats:
            return path
    return "generic"


def kernel_features(target: Target | Mapping[str, Any] | str) -> tuple[str, ...]:
    """The features ``select-kernels`` matches the kernel table's ``requires`` against:
    the target's (``/proc/cpuinfo`` spelling) plus ``avx512vl`` where LLVM has it (the ymm
    ``vpdpbusd`` is EVEX); none for targets whose kernels stay generic (not ``llvm``, or no
    AVX2 dot product, e.g. ``{"kind": "llvm", "mattr": ["-avx2"]}``)."""
    tgt = make_target(target)
    if str(tgt.kind.name) != "llvm" or cpu_dot_path(tgt) == "generic":
        return ()
    feats = set(target_features(tgt))
    if "avx512vl" in llvm_features(tgt):
        feats.add("avx512vl")
    return tuple(sorted(feats))


def kernel_options(target: Target | Mapping[str, Any] | str) -> dict[str, dict[str, Any]]:
    """The ISA the kernel table (``kernels/table.py``) gives each kernel kind on ``target``,
    ignoring shapes: ``{"int_matmul": {"isa": "avx512_vnni"}, ...}``; kinds that stay
    generic are left out. A summary for people and tests; builds choose per op with the
    ``select-kernels`` pass, from the same table and :func:`kernel_features`.
    """
    feats = set(kernel_features(target))
    out: dict[str, dict[str, Any]] = {}
    for row in CPU_KERNELS:
        kind = row.op.removeprefix("rq.")
        if row.row_count_specific:  # small M (packed 4-/2-bit codes) or large M (AMX)
            continue
        if kind not in out and row.requires <= feats:
            out[kind] = {"isa": row.isa}
    return {k: v for k, v in out.items() if v["isa"] != "generic"}


def kernel_kind(func: Any) -> str | None:
    """``rq.kernel`` of a PrimFunc: its attribute, else the annotation of one of its blocks."""
    attrs = func.attrs
    if attrs is not None and KERNEL_ATTR in attrs:
        return str(attrs[KERNEL_ATTR])
    sch = s_tir.Schedule(func)
    for blk in _blocks(sch):
        ann = sch.get(blk).annotations
        if KERNEL_ATTR in ann:
            return str(ann[KERNEL_ATTR])
    return None


# -- helpers ------------------------------------------------------------------------------


def _blocks(sch: Any) -> list[Any]:
    body = sch.mod["main"].body
    if isinstance(body, s_tir.SBlockRealize) and body.block.name_hint != "root":
        # a function of one te.extern stage (e.g. x86.quant) has no root block
        return [sch.get_sblock(body.block.name_hint)]
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _stage(sch: Any, block: Any) -> str | None:
    ann = sch.get(block).annotations
    return str(ann[STAGE_ATTR]) if STAGE_ATTR in ann else None


def _by_stage(sch: Any, stage: str) -> list[Any]:
    return [b for b in _blocks(sch) if _stage(sch, b) == stage]


#: What :func:`_extent` says of a symbolic loop (a symbolic build's row count): a prime
#: above any real extent, so it is "large", divisible by no tile or lane count (no
#: tiling that would need a remainder) and equal to every other symbolic extent (stages
#: over the same rows still merge; where they do not, ``sch.merge`` refuses as usual).
SYMBOLIC_EXTENT = 2**31 - 1


def _extent(sch: Any, loop: Any) -> int:
    e = sch.get(loop).extent
    return int(e) if isinstance(e, tvm.tirx.IntImm) else SYMBOLIC_EXTENT


def _divisor(n: int, want: int) -> int:
    for d in range(min(want, n), 0, -1):
        if n % d == 0:
            return d
    return 1


#: Stages of fewer elements than this stay serial (:func:`_parallel_rows`): a parallel
#: region costs a launch and a join (a few µs on 2 threads), more than the work of the small
#: per-row/per-block stages (row parts ``[M, nb]``, their transposes), and a call runs
#: several of them.
PARALLEL_STAGE_MIN = 1 << 14


def _parallel_rows(sch: Any, block: Any, cfg: CpuScheduleConfig) -> None:
    """Parallelize the outermost loop of a small root-level stage (rows x blocks), unless
    the whole stage has fewer than :data:`PARALLEL_STAGE_MIN` elements."""
    loops = sch.get_loops(block)
    if not (cfg.parallel and loops and _extent(sch, loops[0]) > 1):
        return
    if math.prod(_extent(sch, lp) for lp in loops) < PARALLEL_STAGE_MIN:
        return
    sch.parallel(loops[0])


# -- matmul family ------------------------------------------------------------------------


def _tile_core_at(sch: Any, out: Any, core: Any, cfg: CpuScheduleConfig) -> None:
    """Tile ``out`` (loops ``*batch, i, j, [b]``) and compute ``core`` inside each tile."""
    loops = sch.get_loops(out)
    has_b = len(loops) >= 3 and _stage(sch, out) in ("epilogue", "core_out")
    *batch, i, j = loops[:-1] if has_b else loops
    rest = loops[-1:] if has_b else []
    mi = _divisor(_extent(sch, i), cfg.tile_m)
    nj = _divisor(_extent(sch, j), cfg.tile_n)
    io, ii = sch.split(i, [None, mi])
    jo, ji = sch.split(j, [None, nj])
    sch.reorder(*batch, io, jo, ii, ji, *rest)
    sch.compute_at(core, jo, preserve_unit_loops=True)
    outer = sch.fuse(*batch, io, jo) if batch else sch.fuse(io, jo)
    if cfg.parallel:
        sch.parallel(outer)
    _register_tile(sch, core)


def _register_tile(sch: Any, core: Any) -> None:
    """Core loops ``(.., ii, jj, b, r..)`` → ``(.., b, r.., ii, jj)`` with ii/jj unrolled."""
    loops = sch.get_loops(core)
    nred = sum(1 for iv in sch.get(core).iter_vars if int(iv.iter_type) == _REDUCE)
    red = loops[len(loops) - nred :]
    ii, ji, b = loops[len(loops) - nred - 3 : len(loops) - nred]
    sch.reorder(b, *red, ii, ji)
    sch.unroll(ii)
    sch.unroll(ji)
    sch.decompose_reduction(core, red[0])


def _schedule_fused(sch: Any, cfg: CpuScheduleConfig) -> None:
    if _by_stage(sch, "micro"):  # a hand-written micro-kernel (x86.micro): its own loops
        for stage in ("sums", "prep"):
            for blk in _by_stage(sch, stage):
                _parallel_rows(sch, blk, cfg)
        return
    for blk in _by_stage(sch, "core_out"):  # xnor: 2·popcount - block, folded into its user
        if _by_stage(sch, "epilogue"):
            sch.compute_inline(blk)
    out = (_by_stage(sch, "epilogue") or _by_stage(sch, "core_out"))[0]
    core = _by_stage(sch, "core")[0]
    _tile_core_at(sch, out, core, cfg)
    for stage in ("sums", "prep"):
        for blk in _by_stage(sch, stage):
            _parallel_rows(sch, blk, cfg)


def _schedule_core_only(sch: Any, cfg: CpuScheduleConfig) -> None:
    if _by_stage(sch, "core_out"):  # xnor core: popcount block + affine fix-up
        _schedule_fused(sch, cfg)
        return
    core = _by_stage(sch, "core")[0]
    loops = sch.get_loops(core)
    nred = sum(1 for iv in sch.get(core).iter_vars if int(iv.iter_type) == _REDUCE)
    *batch, i, j, b = loops[: len(loops) - nred]
    red = loops[len(loops) - nred :]
    mi = _divisor(_extent(sch, i), cfg.tile_m)
    nj = _divisor(_extent(sch, j), cfg.tile_n)
    io, ii = sch.split(i, [None, mi])
    jo, ji = sch.split(j, [None, nj])
    sch.reorder(*batch, io, jo, b, *red, ii, ji)
    outer = sch.fuse(*batch, io, jo)
    if cfg.parallel:
        sch.parallel(outer)
    sch.unroll(ii)
    sch.unroll(ji)
    sch.decompose_reduction(core, red[0])


# -- quantize -----------------------------------------------------------------------------


def _schedule_quantize(sch: Any, cfg: CpuScheduleConfig) -> None:
    """One parallel row loop for all stages; every per-block reduction split into lanes.

    ``te_quantize`` is a chain of per-block reductions (grid min/max or means, codes, ridge
    statistics in float64, bit packing), each a sequential sum over the block: as TE writes
    them, every stage is one long add-latency chain (measured ~20 cycles per element on Zen
    3, whatever the memory layout). The schedule

    1. splits each reduction over the block into ``reduce_lanes`` interleaved partial sums
       (``rfactor``) and vectorizes them (LLVM targets), which breaks the chains;
    2. vectorizes the elementwise code stage;
    3. merges the row loops of all stages into one parallel loop, so a row is read from
       cache by every stage.

    Codes stay bit-exact: min/max/abs-max and integer sums are order-free, and the float64
    sums of float32 values that set the 1-bit grid are rounded once to float32 (the
    reference sums in yet another order). Measured one thread, Zen 3, 2048 rows: A1 affine
    ridge K=128 1.7 → 0.4 ms, K=512 7.2 → 1.4 ms; A8 K=512 4.8 → 1.0 ms.

    The AVX2 micro-kernel (``rq.stage = "micro"``, :mod:`x86.quant`) has its own
    parallel row loop and is left as built.
    """
    if not _by_stage(sch, "micro"):
        schedule_row_stages(sch, cfg)


def schedule_row_stages(sch: Any, cfg: CpuScheduleConfig) -> None:
    """Lanes for every reduction, vectorized elementwise stages, one merged parallel row loop.

    The body of :func:`_schedule_quantize`, shared with the float norms of
    ``schedules/float_code.py``; for float sums the lanes reassociate the sum (float32 rounding
    differs in the last bits, as between any two BLAS libraries).
    """
    rfactored = [_split_reduction(sch, blk, cfg) for blk in _blocks(sch)]
    if cfg.vectorize:
        for blk in _blocks(sch):
            _vectorize_inner(sch, blk, cfg)
    blocks = _blocks(sch)
    rows = [sch.get_loops(b)[0] for b in blocks]
    try:
        if len({_extent(sch, r) for r in rows}) != 1:
            raise s_tir.ScheduleError("stages with different row loops")
        row = sch.merge(*rows) if len(rows) > 1 else rows[0]
        if cfg.parallel and _extent(sch, row) > 1:
            sch.parallel(row)
    except s_tir.ScheduleError:  # e.g. a 1-D input (no row axis): each stage on its own
        for blk in blocks:
            _parallel_rows(sch, blk, cfg)
    for rf in rfactored:  # after parallel/vectorize: they need whole reduction blocks
        if rf is not None:
            sch.decompose_reduction(rf, sch.get_loops(rf)[-2])


def _split_reduction(sch: Any, block: Any, cfg: CpuScheduleConfig) -> Any | None:
    """``rfactor`` the innermost reduction loop into ``reduce_lanes`` partial results.

    Returns the partial-result block (its innermost loop is the lanes), or None when the
    block has no such loop (elementwise stages, or a length not divisible by the lanes).
    """
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    if not kinds or kinds[-1] != _REDUCE or kinds.count(_REDUCE) != 1:
        return None
    r = sch.get_loops(block)[-1]
    lanes = cfg.reduce_lanes
    if _extent(sch, r) % lanes or _extent(sch, r) <= lanes:
        return None
    _, ri = sch.split(r, [None, lanes])
    try:
        rf = sch.rfactor(ri, factor_axis=len(kinds) - 1)
    except s_tir.ScheduleError:
        return None
    if cfg.vectorize:
        sch.vectorize(sch.get_loops(rf)[-1])
    return rf


def _vectorize_inner(sch: Any, block: Any, cfg: CpuScheduleConfig) -> None:
    """Vectorize the innermost loop of a root-level elementwise stage (e.g. the codes)."""
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)
    if len(loops) < 2 or any(k == _REDUCE for k in kinds):
        return
    inner = loops[-1]
    n = _extent(sch, inner)
    if n % cfg.lanes == 0 and n > cfg.lanes:
        _, v = sch.split(inner, [None, cfg.lanes])
        sch.vectorize(v)


def _schedule_pack(sch: Any, cfg: CpuScheduleConfig) -> None:
    """Weight packing (runs once, at load): each stage one flat parallel loop.

    Left as nested loops, LLVM spent 20 s compiling one ``[2, 64, 3, 16]`` panel pack
    (unrolling and SLP-vectorizing the div/mod index arithmetic); flat, a fraction of a second.
    """
    for blk in _blocks(sch):
        loops = sch.get_loops(blk)
        if len(loops) > 1:
            loops = [sch.fuse(*loops)]
        if cfg.parallel and loops:
            sch.parallel(loops[0])


_SCHEDULES: dict[str, Callable[[Any, CpuScheduleConfig], None]] = {
    "quantize": _schedule_quantize,
    "pack_weights": _schedule_pack,  # weight-only, lifted out of main: runs once at load
    "int_matmul_core": _schedule_core_only,
    "xnor_popcount_core": _schedule_core_only,
    "sparse24_core": _schedule_core_only,
    "int_matmul": _schedule_fused,
    "xnor_popcount_matmul": _schedule_fused,
    "sparse24_matmul": _schedule_fused,
    "qbmm": _schedule_fused,
    "wo_matmul": _schedule_fused,
}
if set(_SCHEDULES) != set(KERNELS):  # pragma: no cover - import-time consistency check
    raise RuntimeError(
        f"schedules.py does not cover kernels {sorted(set(KERNELS) - set(_SCHEDULES))}"
    )


# -- entry points -------------------------------------------------------------------------


def schedule_prim_func(
    func: Any,
    target: Target | Mapping[str, Any] | str = "llvm",
    config: CpuScheduleConfig | None = None,
) -> Any:
    """Return ``func`` scheduled for ``target``; unchanged if it is not one of our kernels.

    Raises:
        TargetError: the target kind has no rqcompile schedule yet.
    """
    kind = kernel_kind(func)
    if kind is None or (func.attrs is not None and SCHEDULED_ATTR in func.attrs):
        return func
    tgt = make_target(target)
    if str(tgt.kind.name) not in _CPU_KINDS:
        raise TargetError(
            f"no rqcompile schedule for target kind {tgt.kind.name!r} (kernel {kind!r}); "
            f"CPU kinds {_CPU_KINDS} are supported. TODO(issue 9): GPU schedules."
        )
    if kind not in _SCHEDULES:
        raise TargetError(f"unknown rq.kernel {kind!r}; known: {sorted(_SCHEDULES)}")
    sch = s_tir.Schedule(func)
    _SCHEDULES[kind](sch, config or CpuScheduleConfig(vectorize=str(tgt.kind.name) == "llvm"))
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def schedule_module(
    mod: Any,
    target: Target | Mapping[str, Any] | str,
    config: CpuScheduleConfig | None = None,
) -> Any:
    """Schedule every PrimFunc of ``mod`` that carries ``rq.kernel``; leave the rest alone.

    Args:
        mod: a ``tvm.IRModule`` (e.g. a relax module after ``emit_te``).
        target: the build target; only CPU kinds (``llvm``, ``c``) have schedules today.
        config: tile sizes.

    Returns:
        A new IRModule; the input is not modified.
    """
    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or kernel_kind(func) is None:
            continue
        scheduled = schedule_prim_func(func, target, config)
        if scheduled is not func:
            updates[gvar] = scheduled
    if not updates:
        return mod
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    for gvar, func in updates.items():
        new[gvar] = func
    return new
