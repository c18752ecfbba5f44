"""Fused attention for CPU targets: one TIR kernel per attention group, scores kept in L1.

Where it sits: ``emit.emit_module`` emits :func:`te_attention` for each group
:func:`attention_match.find_attention` finds (llvm targets with vector code only); the
PrimFunc carries ``rq.kernel = "attention"`` and ``rq.scheduled``, so neither schedule
phase touches it.

Replaces, per layer of the demo transformer (batch 32x64, width 128, 4 heads, one thread,
Zen 3): the q/k/v slices and head transposes, ``q·kᵀ·scale`` with the mask, softmax,
``·v`` and the transpose back, seven kernels and six intermediate tensors (~2.5 ms).

Per ``(batch, head)`` (the parallel loop):

1. ``kᵀ`` ``[E, S]`` and ``v`` ``[S, Ev]`` are copied into local buffers, read through the
   group's views (so a bias add, slice or transpose upstream costs nothing extra);
2. for each tile of ``tm`` query rows: scores ``tm x 8`` at a time (``kᵀ`` rows are vector
   loads, q broadcast), only for the key blocks a causal tile can see, scaled and masked
   (``-inf``); row max, ``exp`` (TOPI's ``fast_exp`` polynomial, :func:`fast_math.exp_poly`)
   and row sum in vectors; then ``P·v`` in ``tm x 2`` vector tiles over the visible keys,
   divided by the row sum and stored through the output steps (final layout).

Numerics: float32 throughout; the sums are reassociated (8 lanes) and ``1/sum`` is applied
after ``P·v`` instead of before, so results differ from the unfused path (and torch) in the
last bits: measured ~1e-6 relative. Masked keys get weight exactly 0 (the unfused path's
``fast_exp(-inf)`` gives ~1e-38).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.attention_match import AttentionGroup, View, view_shape
from rqcompile.targets.tvm.fast_math import exp_poly

__all__ = ["attention_supported", "te_attention"]

#: Local buffers per (batch, head) above this many bytes: the scores no longer stay in L1
#: and the unfused kernels are as good; keep those groups unfused.
_MAX_LOCAL_BYTES = 256 * 1024
_F32 = "float32"


def _dims_of(g: AttentionGroup) -> tuple[tuple[int, ...], int, int, int, int]:
    *batch, t, e = view_shape(g.q)
    s = view_shape(g.k)[-2]
    ev = view_shape(g.v)[-1]
    return tuple(batch), t, s, e, ev


def attention_supported(g: AttentionGroup, lanes: int) -> bool:
    """Whether :func:`te_attention` takes this group: ``Ev`` a multiple of the vector
    lanes and the per-head working set small enough to stay in cache."""
    _, t, s, e, ev = _dims_of(g)
    sp = -(-s // lanes) * lanes
    local = 4 * (e * sp + s * ev + 4 * (e + sp))
    return lanes > 1 and ev % lanes == 0 and t > 0 and s > 0 and local <= _MAX_LOCAL_BYTES


# -- views: index maps from the kernel's loop indices to its input buffers ----------------


def _strides(shape: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def _ravel(idx: Sequence[Any], shape: Sequence[int]) -> Any:
    terms = [i * st for i, st in zip(idx, _strides(shape), strict=True)]
    flat = terms[0]
    for t in terms[1:]:
        flat = flat + t
    return flat


def _unravel(flat: Any, shape: Sequence[int]) -> list[Any]:
    out = []
    for k, (d, st) in enumerate(zip(shape, _strides(shape), strict=True)):
        q = tirx.floordiv(flat, st) if st > 1 else flat
        out.append(q if k == 0 else tirx.floormod(q, d))
    return out


def _load(view: View, bufs: Sequence[Any], idx: list[Any]) -> Any:
    """The element ``view[idx]``, as loads from ``bufs`` (the kernel inputs)."""
    kind = view[0]
    if kind == "in":
        return bufs[view[1]][tuple(idx)]
    if kind == "reshape":
        inner = view[2]
        return _load(inner, bufs, _unravel(_ravel(idx, view[1]), view_shape(inner)))
    if kind == "permute":
        inner_idx: list[Any] = [None] * len(idx)
        for k, d in enumerate(view[1]):
            inner_idx[d] = idx[k]
        return _load(view[2], bufs, inner_idx)
    if kind == "slice":
        axis, start, step = view[1], view[2], view[3]
        at = list(idx)
        at[axis] = start + idx[axis] * step
        return _load(view[5], bufs, at)
    shape = view[1]  # add, numpy broadcasting
    parts = []
    for child in view[2:]:
        cs = view_shape(child)
        lead = len(shape) - len(cs)
        parts.append(_load(child, bufs, [0 if d == 1 else idx[lead + k] for k, d in enumerate(cs)]))
    return parts[0] + parts[1]


def _store_index(steps: Sequence[tuple[Any, ...]], shape: Sequence[int], idx: list[Any]) -> list[Any]:
    """Where element ``idx`` of the core output lands after the output steps."""
    cur, at = list(shape), list(idx)
    for step in steps:
        if step[0] == "permute":
            at = [at[d] for d in step[1]]
            cur = [cur[d] for d in step[1]]
        else:
            at = _unravel(_ravel(at, cur), step[1])
            cur = list(step[1])
    return at


# -- the kernel ----------------------------------------------------------------------------


def _hreduce(v: Any, lanes: int, op: Any) -> Any:
    """Scalar ``op``-reduction of a ``lanes``-wide vector: a shuffle tree."""
    while lanes > 1:
        half = lanes // 2
        v = op(tirx.Shuffle([v], list(range(half))), tirx.Shuffle([v], list(range(half, lanes))))
        lanes = half
    return v


def _divisor(n: int, want: int) -> int:
    return next(d for d in range(min(want, n), 0, -1) if n % d == 0)


class _Kernel:
    """The TIR body of one group (module docstring); ``L`` is the float32 vector width."""

    def __init__(self, g: AttentionGroup, lanes: int) -> None:
        self.g, self.L = g, lanes
        self.batch, self.t, self.s, self.e, self.ev = _dims_of(g)
        self.sp = -(-self.s // lanes) * lanes
        self.tm = _divisor(self.t, 4)
        self.nc = 2 if self.ev % (2 * lanes) == 0 else 1
        self.ninf = tirx.const(-math.inf, _F32)

    def vec(self, x: Any) -> Any:
        return tirx.Broadcast(x, self.L)

    def lanes(self, base: Any) -> Any:
        return tirx.Ramp(base, 1, self.L)

    def build(self, ins: Sequence[Any], out: Any) -> Any:
        g, L, s, e, ev, sp, tm = self.g, self.L, self.s, self.e, self.ev, self.sp, self.tm
        nb = math.prod(self.batch)
        with IRBuilder() as ib, T.parallel(0, nb) as bh:
            b = _unravel(bh, self.batch) if self.batch else []
            kt = T.decl_buffer((e * sp,), _F32, scope="local")
            vl = T.decl_buffer((s * ev,), _F32, scope="local")
            ql = T.decl_buffer((tm * e,), _F32, scope="local")
            sc = T.decl_buffer((tm * sp,), _F32, scope="local")
            row = T.decl_buffer((2 * tm,), _F32, scope="local")  # max, then 1/sum
            acc = T.decl_buffer((max(tm * self.nc, 2) * L,), _F32, scope="local")
            with T.serial(0, s) as j, T.serial(0, e) as d:
                T.buffer_store(kt, _load(g.k, ins, [*b, j, d]), [d * sp + j])
            if sp > s:
                with T.serial(0, e) as d, T.serial(0, sp - s) as j:
                    T.buffer_store(kt, tirx.const(0.0, _F32), [d * sp + s + j])
            with T.serial(0, s) as j, T.vectorized(0, ev) as d:
                T.buffer_store(vl, _load(g.v, ins, [*b, j, d]), [j * ev + d])
            with T.serial(0, self.t // tm) as it:
                i0 = it * tm
                with T.serial(0, tm) as r, T.vectorized(0, e) as d:
                    T.buffer_store(ql, _load(g.q, ins, [*b, i0 + r, d]), [r * e + d])
                if g.offset is None:
                    ncol: Any = s
                else:
                    ncol = tirx.min(i0 + (tm + g.offset), s)
                nblk = tirx.floordiv(ncol + (L - 1), L)
                self._scores(kt, ql, sc, acc, i0, nblk)
                self._softmax(sc, row, acc, nblk)
                self._pv(sc, vl, row, acc, out, b, i0, ncol)
        return ib.get()

    def _scores(self, kt: Any, ql: Any, sc: Any, acc: Any, i0: Any, nblk: Any) -> None:
        L, e, sp, tm, g = self.L, self.e, self.sp, self.tm, self.g
        with T.serial(0, nblk) as jb:
            for r in range(tm):
                T.buffer_store(acc, self.vec(tirx.const(0.0, _F32)), [self.lanes(r * L)])
            with T.unroll(0, e) as d:
                kv = kt[self.lanes(d * sp + jb * L)]
                for r in range(tm):
                    a = self.lanes(r * L)
                    T.buffer_store(acc, acc[a] + self.vec(ql[r * e + d]) * kv, [a])
            jv = tirx.Ramp(jb * L, 1, L)
            for r in range(tm):
                last: Any = self.s - 1
                if g.offset is not None:
                    last = tirx.min(i0 + (r + g.offset), self.s - 1)
                val = acc[self.lanes(r * L)] * self.vec(tirx.const(g.scale, _F32))
                masked = jv > self.vec(last)
                T.buffer_store(sc, tirx.Select(masked, self.vec(self.ninf), val),
                               [self.lanes(r * sp + jb * L)])  # fmt: skip

    def _softmax(self, sc: Any, row: Any, acc: Any, nblk: Any) -> None:
        L, sp, tm = self.L, self.sp, self.tm
        mx, sm = self.lanes(0), self.lanes(L)
        zero = self.vec(tirx.const(0.0, _F32))
        for r in range(tm):
            T.buffer_store(acc, self.vec(self.ninf), [mx])
            with T.serial(0, nblk) as jb:
                T.buffer_store(acc, tirx.max(acc[mx], sc[self.lanes(r * sp + jb * L)]), [mx])
            T.buffer_store(row, _hreduce(acc[mx], L, tirx.max), [r])
            T.buffer_store(acc, zero, [sm])
            with T.serial(0, nblk) as jb:
                at = self.lanes(r * sp + jb * L)
                x = sc[at]
                # bound first: p reads sc[at], which the store below overwrites
                p = T.bind(tirx.Select(x == self.vec(self.ninf), zero,
                                       exp_poly(x - self.vec(row[r]))))  # fmt: skip
                T.buffer_store(sc, p, [at])
                T.buffer_store(acc, acc[sm] + p, [sm])
            T.buffer_store(row, tirx.const(1.0, _F32) / _hreduce(acc[sm], L, operator.add),
                           [tm + r])  # fmt: skip

    def _pv(self, sc: Any, vl: Any, row: Any, acc: Any, out: Any, b: list[Any], i0: Any,
            ncol: Any) -> None:  # fmt: skip
        L, ev, sp, tm, nc = self.L, self.ev, self.sp, self.tm, self.nc
        core_shape = [*self.batch, self.t, ev]
        with T.serial(0, ev // (nc * L)) as eb:
            for t in range(tm * nc):
                T.buffer_store(acc, self.vec(tirx.const(0.0, _F32)), [self.lanes(t * L)])
            with T.serial(0, ncol) as j:
                vv = [vl[self.lanes(j * ev + eb * (nc * L) + c * L)] for c in range(nc)]
                for r in range(tm):
                    pr = self.vec(sc[r * sp + j])
                    for c in range(nc):
                        a = self.lanes((r * nc + c) * L)
                        T.buffer_store(acc, acc[a] + pr * vv[c], [a])
            for r in range(tm):
                for c in range(nc):
                    with T.vectorized(0, L) as l:
                        at = [*b, i0 + r, eb * (nc * L) + c * L + l]
                        T.buffer_store(out, acc[(r * nc + c) * L + l] * row[tm + r],
                                       _store_index(self.g.out_steps, core_shape, at))  # fmt: skip


def te_attention(*inputs: Any, group: AttentionGroup, lanes: int) -> Any:
    """The fused attention of ``group`` (module docstring) as a ``te.extern`` stage.

    ``inputs`` are the group's inputs (``group.inputs``, as TE tensors); returns the
    group's result tensor.
    """
    shape = [int(d) for d in group.result.type.shape]  # type: ignore[arg-type]
    kernel = _Kernel(group, lanes)
    return te.extern(
        shape,
        list(inputs),
        lambda ins, outs: kernel.build(ins, outs[0]),
        name="attention",
        dtype=_F32,
    )

