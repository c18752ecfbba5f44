"""CPU schedules for the float code around our kernels (TOPI matmul, norms, softmax, GELU...).

Where it sits: phase ``schedule-float`` of ``pipelines.cpu_phases``, after ``schedule``
(which handles our ``rq.kernel`` PrimFuncs). Every other PrimFunc is TOPI float code that
relax legalized and fused; left unscheduled it runs as naive loop nests, which measured
2-30x slower than torch on the demo transformer (one thread, Zen 3, batch 32x64):

============================= ============ ===========================================
PrimFunc (demo, batch 32x64)  unscheduled  scheduled here
============================= ============ ===========================================
attention ``P @ V`` matmul    12 ms        0.4 ms  (register tile, vectorized)
LM head matmul (N = 65)       14 ms        0.5 ms  (N padded to 72: 4 x 24 tiles)
GELU (+ bias, reshapes)       15 ms        see ``fast_math.py`` (libm ``erff`` is scalar)
============================= ============ ===========================================

On llvm targets with vector code the demo's attention (``q·kᵀ``, mask, softmax, ``·v``
and the layout copies around them) is one hand-written kernel instead
(``kernels/attention.py``); these schedules remain its fallback (other targets, shapes it
does not take).

Each PrimFunc gets the first schedule that applies:

1. **matmul** (:func:`schedule_matmul`): one block ``C[.., i, j] += A[.., i, k] * B[.., k, j]``
   (plus elementwise epilogue blocks, e.g. scale and causal mask) gets ``tile_m x tile_n``
   register tiles accumulated in a local buffer, ``j`` vectorized, the epilogue inlined into
   the write-back, tiles fused into one parallel loop. ``k`` stays the sequential reduction
   loop, so results are **bit-identical** to the unscheduled loop nest.
2. **norms** (:func:`schedule_norm`): sums split into vector lanes, all stages in one
   parallel row loop (the quantize schedule of ``schedules.py``).
3. **softmax-like** (:func:`schedule_softmax`): stages computed per row under one parallel
   loop, reductions split into vector lanes, elementwise stages vectorized; anything
   else with reductions gets TVM's ``dlight`` CPU ``Reduction`` rule.
4. **elementwise** (:func:`schedule_elementwise`): chains of injective blocks (bias add,
   reshape, GELU, transposes) inlined into one loop nest, flattened, split into vector
   lanes, vectorized and parallel.
5. otherwise the spatial loops are fused into one flat loop (as before: LLVM fully unrolled
   TOPI's short inner loops, and an inlined polynomial took seconds to compile).

Numerics: only the norms' and softmax's sums are reassociated (lanes; ~1e-6 relative on a
layer norm's output). Every other schedule computes exactly what the unscheduled PrimFunc computes
(vectorization changes the instructions, not the operations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rqcompile.targets.tvm.adapter import (
    Target,
    dlight_cpu_reduction,
    s_tir,
    target_features,
    tvm,
)
from rqcompile.targets.tvm.schedules.integer import (
    SYMBOLIC_EXTENT,
    CpuScheduleConfig,
    _divisor,
    _extent,
    kernel_kind,
    schedule_row_stages,
)

__all__ = [
    "FloatScheduleConfig",
    "schedule_elementwise",
    "schedule_float_cpu",
    "schedule_float_func",
    "schedule_matmul",
    "schedule_norm",
    "schedule_softmax",
]

#: What a rule raises on a function it does not fit: TVM's schedule errors are RuntimeErrors;
#: dlight's analysis asserts and raises ValueError/TypeError on shapes it does not expect.
_RULE_MISFIT = (RuntimeError, ValueError, TypeError, AssertionError, IndexError)
_DATA_PAR = int(tvm.tirx.IterVar.DataPar)
_REDUCE = int(tvm.tirx.IterVar.CommReduce)


@dataclass(frozen=True, kw_only=True)
class FloatScheduleConfig:
    """Tile sizes of the float schedules.

    ``lanes`` is the float32 vector width (8 for AVX2, 4 for SSE/NEON); a matmul tile is
    ``tile_m`` rows by two or three vectors (:meth:`tile_n_for`). Measured on Zen 3 (one
    thread): the attention matmul ``[128, 64, 64] x [128, 64, 32]``, 4x16 tiles 0.39 ms, 2x16
    0.68 ms, 4x8 0.70 ms, 8x8 0.77 ms; the demo's LM head ``[2048, 128] x [128, 65]``, 4x16
    (N padded to 80) 0.66 ms, 4x24 (padded to 72) 0.50-0.52 ms, 5x24/6x24 0.50 ms, 4x32
    1.4 ms (spills); ``[512, 768] x [768, 768]``: 4x16 14.2 ms, 4x24 11.5 ms.
    """

    lanes: int = 8
    tile_m: int = 4
    parallel: bool = True
    vectorize: bool = True

    def tile_n_for(self, n: int) -> int:
        """Columns per tile for ``N = n``: three vectors (12 accumulators at ``tile_m = 4``,
        more FMA chains in flight) unless that pads ``N`` further than two vectors do."""
        two, three = 2 * self.lanes, 3 * self.lanes
        return three if -(-n // three) * three <= -(-n // two) * two else two

    @staticmethod
    def for_target(target: Target | None) -> FloatScheduleConfig:
        """Vector lanes from the target's features: 16 with AVX-512, 8 with AVX, else 4.

        (``llvm_get_vector_width`` reports 512 bits for ``znver3``, which has 256-bit AVX2.)
        """
        if target is None or str(target.kind.name) != "llvm":
            # TVM's C backend prints vector types (float4) that C does not have
            return FloatScheduleConfig(lanes=4, vectorize=False)
        feats = target_features(target)
        lanes = 16 if "avx512f" in feats else 8 if {"avx", "avx2"} & feats else 4
        return FloatScheduleConfig(lanes=lanes)


# -- helpers ------------------------------------------------------------------------------


def _blocks(sch: Any) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _kinds(sch: Any, block: Any) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_reduction(sch: Any, block: Any) -> bool:
    return any(k == _REDUCE for k in _kinds(sch, block))


def _compute_inline(sch: Any, block: Any) -> bool:
    try:
        sch.compute_inline(block)
    except s_tir.ScheduleError:
        return False
    return True


def _reverse_inline(sch: Any, block: Any) -> bool:
    """``reverse_compute_inline`` where it is sound. TVM checks that ``block`` has one
    producer, not that the producer's buffer has one consumer: it would rewrite the producer
    to store ``block``'s result and drop the buffer its other consumers still read (GELU's
    ``x * Φ(x)``: "T_add_intermediate is used before its definition" at build)."""
    if any(len(sch.get_consumers(p)) != 1 for p in sch.get_producers(block)):
        return False
    try:
        sch.reverse_compute_inline(block)
    except s_tir.ScheduleError:
        return False
    return True


def _try_inline(sch: Any, blocks: list[Any]) -> list[Any]:
    """Inline every block that can be (forward, then backward); return the rest."""
    left = list(blocks)
    changed = True
    while changed:
        changed = False
        for how in (_compute_inline, _reverse_inline):
            for b in list(left):
                if how(sch, b):
                    left.remove(b)
                    changed = True
                    break
            if changed:
                break
    return left


def _vector_loop(sch: Any, loop: Any, cfg: FloatScheduleConfig, *, parallel: bool) -> None:
    """Split ``loop`` into vector lanes (when they divide it), vectorize, parallel outside."""
    n = _extent(sch, loop)
    lanes = _divisor(n, cfg.lanes) if cfg.vectorize else 1
    if lanes > 1 and n > lanes:
        outer, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)
        if parallel and cfg.parallel:
            sch.parallel(outer)
    elif lanes > 1:
        sch.vectorize(loop)
    elif parallel and cfg.parallel and n > 1:
        sch.parallel(loop)


# -- matmul -------------------------------------------------------------------------------


def _matmul_block(sch: Any) -> Any | None:
    """The block ``C[.., i, j] += A[.., i, k] * B[.., k, j]``, if the func has exactly one.

    Other blocks must be injective (the epilogue relax fused in). ``B`` must be indexed by
    ``j`` last, so the tile's ``j`` lanes are contiguous loads.
    """
    blocks = _blocks(sch)
    red = [b for b in blocks if _is_reduction(sch, b)]
    if len(red) != 1:
        return None
    blk = red[0]
    stmt = sch.get(blk)
    kinds = _kinds(sch, blk)
    if len(kinds) < 3 or kinds[-1] != _REDUCE or any(k != _DATA_PAR for k in kinds[:-1]):
        return None
    if len(stmt.writes) != 1 or not str(stmt.writes[0].source.dtype).startswith("float"):
        return None
    jvar, kvar = stmt.iter_vars[-2].var, stmt.iter_vars[-1].var
    out = stmt.writes[0].source
    operands = [r for r in stmt.reads if not r.source.same_as(out)]
    if len(operands) != 2:
        return None
    b_last = [r.region[-1].min for r in operands]
    if not any(e.same_as(jvar) for e in b_last) or not any(e.same_as(kvar) for e in b_last):
        return None
    return blk


def schedule_matmul(sch: Any, cfg: FloatScheduleConfig) -> bool:
    """Register-tile the float matmul of ``sch`` (module docstring); False if none."""
    mm = _matmul_block(sch)
    if mm is None:
        return False
    loops = sch.get_loops(mm)
    if len(loops) < 3:
        return False
    if _extent(sch, loops[-2]) == SYMBOLIC_EXTENT:  # symbolic columns: no padded tiles
        return False
    tile_n = cfg.tile_n_for(_extent(sch, loops[-2]))
    if _extent(sch, loops[-2]) % tile_n:  # e.g. an LM head with N = 65: pad N
        pad = [1] * len(loops)
        pad[-2] = tile_n
        sch.pad_einsum(mm, pad)
        loops = sch.get_loops(mm)
    *batch, i, j, k = loops
    io, ii = sch.split(i, [None, _divisor(_extent(sch, i), cfg.tile_m)])
    jo, ji = sch.split(j, [None, tile_n])
    sch.reorder(*batch, io, jo, k, ii, ji)
    acc = sch.cache_write(mm, 0, "local")
    sch.reverse_compute_at(acc, jo)
    _inline_epilogue(sch, acc)
    sch.unroll(ii)
    if cfg.vectorize:
        # vector-wide pieces, unrolled: LLVM's code for a 24-lane vector measured 7x slower
        for loop in (ji, sch.get_loops(acc)[-1]):
            vecs, lanes = sch.split(loop, [None, cfg.lanes])
            sch.unroll(vecs)
            sch.vectorize(lanes)  # before the fuse: vectorize wants affine bindings
    else:
        sch.unroll(ji)
    outer = sch.fuse(*batch, io, jo) if batch else sch.fuse(io, jo)
    if cfg.parallel:
        sch.parallel(outer)  # before decompose_reduction: it needs a reduction block
    sch.decompose_reduction(mm, k)
    for blk in _blocks(sch):  # padding copies and epilogue blocks that did not inline
        if not _is_reduction(sch, blk) and not sch.get(blk).same_as(sch.get(mm)):
            _flat_vector(sch, blk, cfg)
    return True


def _downstream(sch: Any, block: Any) -> list[Any]:
    """Every block that reads, directly or not, what ``block`` writes."""
    seen: set[str] = set()
    out, todo = [], list(sch.get_consumers(block))
    while todo:
        blk = todo.pop()
        name = str(sch.get(blk).name_hint)
        if name not in seen:
            seen.add(name)
            out.append(blk)
            todo.extend(sch.get_consumers(blk))
    return out


def _inline_epilogue(sch: Any, acc: Any) -> None:
    """Fold the elementwise consumers of the accumulator write-back into it.

    A consumer is folded only while it is the accumulator's only one (:func:`_reverse_inline`).
    When the epilogue branches (GELU reads its input twice), its inner stages are first
    inlined forward into the stages that read them, which joins the branches in the last one.
    """
    joined = False
    while consumers := sch.get_consumers(acc):
        if _reverse_inline(sch, consumers[0]):
            continue
        if joined or len(consumers) == 1:
            return
        joined = True
        for blk in _downstream(sch, acc):
            _compute_inline(sch, blk)


# -- elementwise and fallback -------------------------------------------------------------


def _flat_vector(sch: Any, block: Any, cfg: FloatScheduleConfig) -> None:
    """Fuse a root-level injective block's loops into one, then vector lanes + parallel."""
    try:
        loops = sch.get_loops(block)
        if not loops or any(k != _DATA_PAR for k in _kinds(sch, block)):
            return
        extents = [_extent(sch, loop) for loop in loops]
        if SYMBOLIC_EXTENT in extents:  # symbolic build: vectorize the static tail only
            _split_symbolic(sch, loops, extents, cfg)
            return
        if _extent(sch, loops[0]) != 1 and len(loops) > 1:
            loops = [sch.fuse(*loops)]
        if len(loops) == 1:
            _vector_loop(sch, loops[0], cfg, parallel=True)
    except s_tir.ScheduleError:  # an unusual nest: leave it
        return


def _leading_group(extents: list[int]) -> int:
    """How many leading loops of a nest with symbolic extents fuse into its parallel loop:
    up to the second symbolic one, so recovering each index divides by static extents only
    (a flat loop over every dim divides by a symbolic dim at every element)."""
    syms = [i for i, e in enumerate(extents) if e == SYMBOLIC_EXTENT]
    return syms[1] if len(syms) > 1 else len(extents)


def _split_symbolic(sch: Any, loops: list[Any], extents: list[int],
                    cfg: FloatScheduleConfig) -> None:  # fmt: skip
    """A nest with symbolic extents (a symbolic build's rows): the loops after the last
    symbolic one, all static, fused and vectorized; the leading loops (:func:`_leading_group`)
    fused into one parallel loop; the loops between them stay nested."""
    last = max(i for i, e in enumerate(extents) if e == SYMBOLIC_EXTENT)
    inner = loops[last + 1 :]
    lead = min(_leading_group(extents), last + 1)
    if inner:
        _vector_loop(sch, sch.fuse(*inner) if len(inner) > 1 else inner[0], cfg,
                     parallel=False)  # fmt: skip
    row = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    if cfg.parallel:
        sch.parallel(row)


def schedule_elementwise(sch: Any, cfg: FloatScheduleConfig) -> bool:
    """Inline a chain of injective blocks into one flat, vectorized loop; False if not all
    blocks are injective."""
    blocks = _blocks(sch)
    if not blocks or any(_is_reduction(sch, b) for b in blocks):
        return False
    for blk in _try_inline(sch, blocks):
        _flat_vector(sch, blk, cfg)
    return True


def schedule_norm(sch: Any, cfg: FloatScheduleConfig) -> bool:
    """Norm-like functions (layer/RMS norm: per-row sums, then one or two elementwise
    stages): :func:`schedules.schedule_row_stages`, i.e. each sum split into vector lanes
    and all stages in one row loop. Layer norm of the demo (2048 x 128): 0.47 → 0.08 ms.

    Functions with more elementwise stages (softmax and its polynomial ``exp``) are left to
    dlight's rule (:func:`_schedule_rows`), which measured faster on them (0.75 vs 1.4 ms).
    """
    blocks = _blocks(sch)
    red = [b for b in blocks if _is_reduction(sch, b)]
    if not red or len(blocks) - len(red) > 2 or _is_reduction(sch, blocks[-1]):
        return False
    row_cfg = CpuScheduleConfig(
        vectorize=cfg.vectorize, lanes=cfg.lanes, reduce_lanes=cfg.lanes, parallel=cfg.parallel
    )
    schedule_row_stages(sch, row_cfg)
    return True


def schedule_softmax(sch: Any, cfg: FloatScheduleConfig) -> bool:
    """Softmax-like functions (reductions along the last axis, then elementwise stages):
    per-row stages under one parallel row loop, each reduction split into ``lanes``
    partial results (``rfactor``), elementwise stages vectorized.

    dlight's rule (:func:`_schedule_rows`) does the same without the lanes, so its max and
    sum are one add-latency chain per row: the demo's softmax (8192 rows of 64) took 0.76 ms
    there and 0.45 ms here. The sum is reassociated (float32 rounding of the last bits).
    """
    blocks = _blocks(sch)
    if not cfg.vectorize or _is_reduction(sch, blocks[-1]):
        return False
    if not any(_is_reduction(sch, b) for b in blocks):
        return False
    partial = []
    for blk in blocks:
        if not _is_reduction(sch, blk):
            continue
        kinds = _kinds(sch, blk)
        r = sch.get_loops(blk)[-1]
        if kinds[-1] != _REDUCE or kinds.count(_REDUCE) != 1:
            return False
        if _extent(sch, r) == SYMBOLIC_EXTENT:  # a symbolic row length: no lanes
            continue
        if _extent(sch, r) % cfg.lanes:
            return False
        _, ri = sch.split(r, [None, cfg.lanes])
        partial.append(sch.rfactor(ri, factor_axis=len(kinds) - 1))
    row_loops = sch.get_loops(blocks[-1])[:-1]
    extents = [_extent(sch, loop) for loop in row_loops]
    if SYMBOLIC_EXTENT in extents:  # symbolic rows: fuse only where no symbolic division
        lead = _leading_group(extents)
        par = sch.fuse(*row_loops[:lead]) if lead > 1 else row_loops[0]
        rows = sch.get_loops(blocks[-1])[len(row_loops) - lead]
    else:
        rows = par = sch.fuse(*row_loops)
    for blk in reversed(_blocks(sch)[:-1]):
        sch.compute_at(blk, rows, preserve_unit_loops=True)
    for blk in _blocks(sch):
        loops = sch.get_loops(blk)
        if any(sch.get(blk).same_as(sch.get(p)) for p in partial):
            sch.reorder(loops[-1], loops[-2])  # compute_at put the lanes outside the sum
            sch.vectorize(sch.get_loops(blk)[-1])
        elif not _is_reduction(sch, blk) and len(loops) > 1:
            _vector_loop(sch, loops[-1], cfg, parallel=False)
    if cfg.parallel:
        sch.parallel(par)
    for p in partial:  # after parallel/vectorize: they need whole reduction blocks
        sch.decompose_reduction(p, sch.get_loops(p)[-2])
    return True


def _schedule_rows(func: Any, target: Target | None) -> Any | None:
    """Other row reductions: dlight's CPU ``Reduction`` rule, if it applies."""
    if target is None or str(target.kind.name) != "llvm":
        return None
    with target:
        return dlight_cpu_reduction().apply(func, target, False)


def _symbolic_vector_loop(func: Any) -> bool:
    """Whether ``func`` has a vectorized loop whose extent is not a constant (read off its
    script: TVM's Python API has no TIR visitor)."""
    import re

    return any(not re.fullmatch(r"[\d\s,]*", m)
               for m in re.findall(r"T\.vectorized\(([^)]*)\)", func.script()))  # fmt: skip


def _fuse_spatial(sch: Any, cfg: FloatScheduleConfig) -> bool:
    """Fallback: fuse each block's leading data-parallel loops into one flat loop."""
    for block in _blocks(sch):
        try:
            loops = sch.get_loops(block)
            nspatial = len(loops) - sum(1 for k in _kinds(sch, block) if k != _DATA_PAR)
            extents = [_extent(sch, loop) for loop in loops[:nspatial]]
            if SYMBOLIC_EXTENT in extents:  # symbolic rows: no per-element division
                nspatial = _leading_group(extents)
                if cfg.parallel and nspatial:
                    sch.parallel(sch.fuse(*loops[:nspatial]) if nspatial > 1 else loops[0])
                continue
            if nspatial >= 2:
                sch.fuse(*loops[:nspatial])
        except s_tir.ScheduleError:
            continue
    return True


# -- entry points -------------------------------------------------------------------------


def _with(rule: Callable[[Any, FloatScheduleConfig], bool]) -> Callable[..., Any]:
    def run(func: Any, cfg: FloatScheduleConfig, target: Target | None) -> Any | None:
        sch = s_tir.Schedule(func)
        return sch if rule(sch, cfg) else None

    return run


#: Tried in order on a fresh schedule each; the first that returns a schedule wins.
_RULES: tuple[Callable[[Any, FloatScheduleConfig, Target | None], Any | None], ...] = (
    _with(schedule_matmul),
    _with(schedule_norm),
    _with(schedule_softmax),
    lambda func, cfg, target: _schedule_rows(func, target),
    _with(schedule_elementwise),
)


def schedule_float_func(
    func: Any, target: Target | None = None, config: FloatScheduleConfig | None = None,
    *, symbolic: bool = False,
) -> Any:  # fmt: skip
    """``func`` (a TOPI float PrimFunc) scheduled by the first rule that applies; with
    ``symbolic`` (a symbolic build), a rule whose result vectorizes a loop of symbolic length
    does not apply."""
    cfg = config or FloatScheduleConfig.for_target(target)
    for rule in _RULES:
        try:
            sch = rule(func, cfg, target)
        except _RULE_MISFIT:
            continue  # this rule does not fit; try the next one
        if sch is not None and symbolic and _symbolic_vector_loop(sch.mod["main"]):
            continue  # it vectorized a loop of symbolic length, which LLVM cannot take
        if sch is not None:
            return sch.mod["main"]
    sch = s_tir.Schedule(func)
    _fuse_spatial(sch, cfg)
    return sch.mod["main"]


def schedule_float_cpu(mod: Any, target: Target | None = None) -> Any:
    """Schedule every PrimFunc of ``mod`` that is not one of our kernels (module docstring).

    Our kernels (``rq.kernel``) are left to :func:`schedules.schedule_module`. Returns a new
    IRModule; the input is not modified.
    """
    cfg = FloatScheduleConfig.for_target(target)
    # a symbolic build (``targets/tvm/symbolic.py``) bounds its dims on main
    main = mod.functions.get(mod.get_global_var("main")) if "main" in mod else None
    symbolic = main is not None and "tir_var_upper_bound" in (main.attrs or {})
    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or kernel_kind(func) is not None:
            continue
        updates[gvar] = schedule_float_func(func, target, cfg, symbolic=symbolic)
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    for gvar, func in updates.items():
        new[gvar] = func
    return new
