"""CPU schedules (``tvm.s_tir``) for the kernels of :mod:`rqcompile.targets.tvm.kernels`.

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
``rq.kernel`` picks the schedule, ``rq.stage`` names the blocks (see ``kernels.py``).
Schedules never change numerics: integer cores stay bit-exact, and the epilogue keeps its
reduction order over blocks.

Integer-affine, 2:4 and A1W1 (XNOR-popcount) matmuls on AVX2 targets do not use these
loops: :func:`kernel_options` makes the emitter build them as hand-written micro-kernels,
whose block carries ``rq.stage = "micro"``; the schedule then only parallelizes the small TE
stages around it. Affine and 2:4 kernels run on weights packed once at load
(:mod:`.kernels_x86_panel`; :mod:`.kernels_x86` for shapes the panels do not fit); the
packing (``rq.kernel = "pack_weights"``) runs once, in ``main_transform_params``. A1W1 uses
``vpshufb`` LUT or ``vpopcntq`` popcounts (:mod:`.kernels_x86_xnor`). Other targets, and
shapes the micro-kernels do not take, keep the generic TE kernels below. Not done: an
AVX-512 VNNI (``vpdpbusd``) path, which needs a VNNI host to prove bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rqcompile.errors import TargetError
from rqcompile.targets.tvm.adapter import Target, make_target, s_tir, target_features, tvm
from rqcompile.targets.tvm.kernels import KERNEL_ATTR, KERNELS, STAGE_ATTR

__all__ = [
    "SCHEDULED_ATTR",
    "CpuScheduleConfig",
    "cpu_dot_path",
    "kernel_kind",
    "kernel_options",
    "schedule_module",
    "schedule_prim_func",
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


def kernel_options(target: Target | Mapping[str, Any] | str) -> dict[str, dict[str, Any]]:
    """Extra keywords per kernel builder (``kernels.te_<kind>``) for ``target``'s features.

    The emitter passes them to the TE builders, so the instruction-set choice is made once,
    at build time, from the *target's* features (never the host's by assumption): AVX2
    targets get the packed-panel micro-kernels (``isa="avx2"``), every other LLVM target
    (including x86 without AVX2, or ``{"kind": "llvm", "mattr": ["-avx2"]}``) the generic
    TE kernels. AVX-512 VNNI targets also take the AVX2 path today (a ``vpdpbusd`` kernel
    needs a host with VNNI to prove it bit-exact; none was available). A1W1 matmuls get the
    XNOR-popcount micro-kernel of :mod:`.kernels_x86_xnor`: ``vpopcntq`` where the target
    has AVX-512 VPOPCNTDQ, the ``vpshufb`` nibble LUT on other AVX2 targets.
    """
    tgt = make_target(target)
    if str(tgt.kind.name) != "llvm" or cpu_dot_path(tgt) == "generic":
        return {}
    feats = target_features(tgt)
    if "avx2" not in feats:  # an AVX-512 VNNI target with AVX2 switched off
        return {}
    xnor = "avx512_vpopcntdq" if "avx512_vpopcntdq" in feats else "avx2"
    return {
        "int_matmul": {"isa": "avx2"},
        "sparse24_matmul": {"isa": "avx2"},
        "xnor_popcount_matmul": {"isa": xnor},
    }


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
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _stage(sch: Any, block: Any) -> str | None:
    ann = sch.get(block).annotations
    return str(ann[STAGE_ATTR]) if STAGE_ATTR in ann else None


def _by_stage(sch: Any, stage: str) -> list[Any]:
    return [b for b in _blocks(sch) if _stage(sch, b) == stage]


def _extent(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


def _divisor(n: int, want: int) -> int:
    for d in range(min(want, n), 0, -1):
        if n % d == 0:
            return d
    return 1


def _parallel_rows(sch: Any, block: Any, cfg: CpuScheduleConfig) -> None:
    """Parallelize the outermost loop of a small root-level stage (rows x blocks)."""
    loops = sch.get_loops(block)
    if cfg.parallel and loops and _extent(sch, loops[0]) > 1:
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
    if _by_stage(sch, "micro"):  # a hand-written micro-kernel (kernels_x86): its own loops
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


#: Independent (row, block) sums interleaved by :func:`_interleave_sums`.
_SUM_LANES = 8


def _interleave_sums(sch: Any, block: Any, skip: int = 0) -> Any:
    """Reorder a per-block reduction ``(<skip loops>, *spatial, r)`` to ``(outer, r, inner)``.

    ``inner`` (unrolled) walks :data:`_SUM_LANES` consecutive (row, block) outputs, so their
    float64 sums advance side by side instead of one add-latency chain after another. Each
    sum still adds its terms in the same order: results are bit-identical. Returns
    ``outer`` (``None``, nothing changed, for other loop nests).
    """
    loops = sch.get_loops(block)[skip:]
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    if len(loops) < 2 or kinds.count(_REDUCE) != 1 or kinds[-1] != _REDUCE:
        return None
    *spatial, r = loops
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    outer, inner = sch.split(fused, [None, _divisor(_extent(sch, fused), _SUM_LANES)])
    sch.reorder(outer, r, inner)
    sch.unroll(inner)
    return outer


def _rows_merged(sch: Any, cfg: CpuScheduleConfig) -> bool:
    """Run every stage of one row (all leading dims) inside one loop over rows.

    ``x`` and the row's intermediates (a float code per element, the block sums) then stay
    in cache between the stages: 2.6x faster at 512 x 4096, where each stage used to stream
    8 MB. Returns False (nothing changed) when ``x`` has no leading dims.
    """
    blocks = _blocks(sch)
    nlead = min(sum(int(iv.iter_type) != _REDUCE for iv in sch.get(b).iter_vars)
                for b in blocks) - 1  # fmt: skip
    if nlead < 1:
        return False
    rows = []
    for blk in blocks:
        lead = sch.get_loops(blk)[:nlead]
        rows.append(sch.fuse(*lead) if nlead > 1 else lead[0])
    row = sch.merge(*rows) if len(rows) > 1 else rows[0]
    if cfg.parallel and _extent(sch, row) > 1:
        sch.parallel(row)
    for blk in blocks:
        loops = sch.get_loops(blk)
        if _interleave_sums(sch, blk, skip=1) is not None:
            sch.decompose_reduction(blk, loops[-1])
    return True


def _schedule_quantize(sch: Any, cfg: CpuScheduleConfig) -> None:
    """One parallel loop over rows running every stage; per-block sums interleaved.

    Quantization is O(M·K) against the matmul's O(M·N·K), but its float64 block sums were
    latency-bound (one dependent add per element, seven sums for a ridge 1-bit grid) and
    each stage streamed the whole input: together as slow as the A1W1 matmul itself at
    M=64, K=N=1024. Numerics are unchanged (every sum keeps its order).
    """
    if _rows_merged(sch, cfg):
        return
    for blk in _blocks(sch):
        outer = _interleave_sums(sch, blk)
        if outer is None:
            _parallel_rows(sch, blk, cfg)
            continue
        if cfg.parallel and _extent(sch, outer) > 1:
            sch.parallel(outer)
        sch.decompose_reduction(blk, sch.get_loops(blk)[1])


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
    _SCHEDULES[kind](sch, config or CpuScheduleConfig())
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
