"""Fused attention for CPU targets: one TIR kernel per attention group, scores kept in L1.

Where it sits: ``emit.emit_module`` emits :func:`te_attention` for each group
:func:`patterns.attention.find_attention` finds (llvm targets with vector code only); the
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

from rqcompile.passes.ir.patterns.attention import (
    AttentionGroup,
    View,
    attention_dims,
    attention_fits,
    view_shape,
)
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels.common import scratch
from rqcompile.targets.tvm.kernels.fast_math import exp_poly

__all__ = ["attention_supported", "te_attention"]

_F32 = "float32"


_dims_of = attention_dims
#: Whether :func:`te_attention` takes a group (the ``fuse-attention`` pass asks the same).
attention_supported = attention_fits


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


def _store_index(
    steps: Sequence[tuple[Any, ...]], shape: Sequence[int], idx: list[Any]
) -> list[Any]:
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


def _transpose8(rows: list[Any]) -> list[Any]:
    """Columns of an 8x8 float32 block given as 8 row vectors: the AVX idiom (unpack,
    ``shufps``, ``vperm2f128``), each step a two-input shuffle LLVM maps to one instruction."""

    def shuf(a: Any, b: Any, idx: list[int]) -> Any:
        return T.bind(tirx.Shuffle([a, b], idx))

    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = []
    for i in range(0, 8, 2):
        t += [shuf(rows[i], rows[i + 1], lo), shuf(rows[i], rows[i + 1], hi)]
    even, odd = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = []
    for i in (0, 4):  # t[i], t[i+1] from rows i/2.., t[i+2], t[i+3] from the next pair
        u += [shuf(t[i], t[i + 2], even), shuf(t[i], t[i + 2], odd),
              shuf(t[i + 1], t[i + 3], even), shuf(t[i + 1], t[i + 3], odd)]  # fmt: skip
    first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return [tirx.Shuffle([u[c], u[c + 4]], first) for c in range(4)] + [
        tirx.Shuffle([u[c], u[c + 4]], second) for c in range(4)
    ]


def _divisor(n: int, want: int) -> int:
    return next(d for d in range(min(want, n), 0, -1) if n % d == 0)


class _Kernel:
    """The TIR body of one group (module docstring); ``L`` is the float32 vector width.

    Tiles (measured on Zen 3, demo shapes): ``tm = 8`` query rows per tile, so the score
    loop has 8 independent FMA chains (two FMA pipes of latency 4) and a causal tile wastes
    no more than with 4 rows; ``P·v`` runs on ``4 x 2``-vector sub-tiles (6 loads per 8
    FMAs). Each phase has its own small local buffers so LLVM keeps them in registers.
    """

    qr, qv = 8, 1  # score register tile: rows x vectors
    #: ``q·kᵀ``'s loop over the head dimension is unrolled this far, not fully: fully
    #: unrolled (E = 32), LLVM hoisted all ``qr·E`` broadcasts of ``q`` out of the key-block
    #: loop into stack slots and fed every FMA from memory; the kernel measured 1.02 ms per
    #: demo layer that way, 0.75-0.77 ms with chunks of 4, 8 or 16 (same floats).
    d_unroll = 8

    def __init__(self, g: AttentionGroup, lanes: int) -> None:
        self.g, self.L = g, lanes
        self.batch, self.t, self.s, self.e, self.ev = _dims_of(g)
        self.tm = _divisor(self.t, 8)
        self.qr = _divisor(self.tm, self.qr)
        self.sp = -(-self.s // (lanes * self.qv)) * lanes * self.qv
        self.sr = _divisor(self.tm, 4)  # rows per P·v sub-tile
        self.nc = 2 if self.ev % (2 * lanes) == 0 else 1
        self.ninf = tirx.const(-math.inf, _F32)
        self.zero = tirx.Broadcast(tirx.const(0.0, _F32), lanes)

    def vec(self, x: Any) -> Any:
        return tirx.Broadcast(x, self.L)

    def lanes(self, base: Any) -> Any:
        return tirx.Ramp(base, 1, self.L)

    def build(self, ins: Sequence[Any], out: Any) -> Any:
        """All local buffers are declared once per chunk of heads: TVM allocates those over
        1 KiB with ``TVMBackendAllocWorkspace`` where they are declared, and one allocation
        per head cost ~10% of the kernel."""
        L, sp, tm, sr, w = self.L, self.sp, self.tm, self.sr, self.nc * self.L
        nb = math.prod(self.batch)
        chunk = _divisor(nb, max(1, nb // 16))
        with IRBuilder() as ib, T.parallel(0, nb // chunk) as ch:
            names = ("kt", "kr", "vl", "ql", "sc", "mx", "inv", "sacc", "sm", "pacc")
            sizes = (self.e * sp, self.s * self.e, self.s * self.ev, tm * self.e, tm * sp,
                     tm * L, tm, self.qr * self.qv * L, L, sr * w)  # fmt: skip
            self.buf = {
                n: scratch(k, _F32)
                for n, k in zip(names, sizes, strict=True)
            }
            with T.serial(0, chunk) as c:
                self._head(ins, out, _unravel(ch * chunk + c, self.batch) if self.batch else [])
        return ib.get()

    def _head(self, ins: Sequence[Any], out: Any, b: list[Any]) -> None:
        """One (batch, head): ``kᵀ`` and ``v`` into local buffers, then row tiles."""
        g, L, s, e, ev, tm = self.g, self.L, self.s, self.e, self.ev, self.tm
        kt, vl, ql, sc = (self.buf[n] for n in ("kt", "vl", "ql", "sc"))
        self._load_kt(ins, b)
        with T.serial(0, s) as j, T.vectorized(0, ev) as d:
            T.buffer_store(vl, _load(g.v, ins, [*b, j, d]), [j * ev + d])
        with T.serial(0, self.t // tm) as it:
            i0 = it * tm
            with T.serial(0, tm) as r, T.vectorized(0, e) as d:
                T.buffer_store(ql, _load(g.q, ins, [*b, i0 + r, d]), [r * e + d])
            # keys the tile can see: all, or up to its last row's causal bound
            ncol: Any = s if g.offset is None else tirx.min(i0 + (tm + g.offset), s)
            nsb = tirx.floordiv(ncol + (L * self.qv - 1), L * self.qv)
            mx, inv = self.buf["mx"], self.buf["inv"]
            self._scores(kt, ql, sc, mx, i0, nsb)
            self._softmax(sc, mx, inv, nsb * self.qv)
            self._pv(sc, vl, inv, out, b, i0, ncol)

    def _load_kt(self, ins: Sequence[Any], b: list[Any]) -> None:
        """``kt[d, j] = k[j, d]``, padded keys 0. With 8 lanes and ``S, E`` multiples of 8
        the rows are copied with vector loads into ``kr`` and 8x8 blocks transposed in
        registers (:func:`_transpose8`): the scalar strided stores measured ~15% of the
        kernel."""
        g, s, e, sp = self.g, self.s, self.e, self.sp
        kt = self.buf["kt"]
        if self.L == 8 and s % 8 == 0 and e % 8 == 0:
            kr = self.buf["kr"]
            with T.serial(0, s) as j, T.vectorized(0, e) as d:
                T.buffer_store(kr, _load(g.k, ins, [*b, j, d]), [j * e + d])
            with T.serial(0, s // 8) as jb, T.serial(0, e // 8) as db:
                rows = [T.bind(kr[tirx.Ramp((jb * 8 + jj) * e + db * 8, 1, 8)]) for jj in range(8)]
                for c, col in enumerate(_transpose8(rows)):
                    T.buffer_store(kt, col, [tirx.Ramp((db * 8 + c) * sp + jb * 8, 1, 8)])
        else:
            with T.serial(0, s) as j, T.serial(0, e) as d:
                T.buffer_store(kt, _load(g.k, ins, [*b, j, d]), [d * sp + j])
        if sp > s:
            with T.serial(0, e) as d, T.serial(0, sp - s) as j:
                T.buffer_store(kt, tirx.const(0.0, _F32), [d * sp + s + j])

    def _scores(self, kt: Any, ql: Any, sc: Any, mx: Any, i0: Any, nblk: Any) -> None:
        """Masked, scaled scores of the tile's visible key blocks; ``mx`` their row max.

        ``qr x qv``-vector register tiles over ``nblk`` blocks of ``qv·L`` keys."""
        L, e, sp, tm, g, qr, qv = self.L, self.e, self.sp, self.tm, self.g, self.qr, self.qv
        for r in range(tm):
            T.buffer_store(mx, self.vec(self.ninf), [self.lanes(r * L)])
        acc = self.buf["sacc"]
        with T.serial(0, tm // qr) as rg, T.serial(0, nblk) as jb:
            for t in range(qr * qv):
                T.buffer_store(acc, self.zero, [self.lanes(t * L)])
            # d in a rolled loop of unrolled chunks (see d_unroll)
            du = _divisor(e, self.d_unroll)
            with T.serial(0, e // du) as dc, T.unroll(0, du) as di:
                d = dc * du + di
                kv = [kt[self.lanes(d * sp + (jb * qv + c) * L)] for c in range(qv)]
                for r in range(qr):
                    qb = self.vec(ql[(rg * qr + r) * e + d])
                    for c in range(qv):
                        a = self.lanes((r * qv + c) * L)
                        T.buffer_store(acc, acc[a] + qb * kv[c], [a])
            for r in range(qr):
                row = rg * qr + r
                last: Any = self.s - 1
                if g.offset is not None:
                    last = tirx.min(i0 + row + g.offset, self.s - 1)
                for c in range(qv):
                    jv = tirx.Ramp((jb * qv + c) * L, 1, L)
                    val = acc[self.lanes((r * qv + c) * L)] * self.vec(tirx.const(g.scale, _F32))
                    x = T.bind(tirx.Select(jv > self.vec(last), self.vec(self.ninf), val))
                    T.buffer_store(sc, x, [self.lanes(row * sp + (jb * qv + c) * L)])
                    T.buffer_store(mx, tirx.max(mx[self.lanes(row * L)], x), [self.lanes(row * L)])

    def _softmax(self, sc: Any, mx: Any, inv: Any, nblk: Any) -> None:
        """``sc`` ← ``exp(sc - max)`` (masked: 0); ``inv`` ← 1 / row sums."""
        L, sp, tm = self.L, self.sp, self.tm
        for r in range(tm):
            m = T.bind(self.vec(_hreduce(mx[self.lanes(r * L)], L, tirx.max)))
            sm = self.buf["sm"]
            T.buffer_store(sm, self.zero, [self.lanes(0)])
            with T.serial(0, nblk) as jb:
                at = self.lanes(r * sp + jb * L)
                x = sc[at]
                # bound first: p reads sc[at], which the store below overwrites
                p = T.bind(tirx.Select(x == self.vec(self.ninf), self.zero, exp_poly(x - m)))
                T.buffer_store(sc, p, [at])
                T.buffer_store(sm, sm[self.lanes(0)] + p, [self.lanes(0)])
            total = _hreduce(sm[self.lanes(0)], L, operator.add)
            T.buffer_store(inv, tirx.const(1.0, _F32) / total, [r])

    def _pv(self, sc: Any, vl: Any, inv: Any, out: Any, b: list[Any], i0: Any, ncol: Any) -> None:
        """``P·v`` over the visible keys in ``sr x nc``-vector sub-tiles, scaled by ``inv``
        and stored through the output steps."""
        L, ev, sp, sr, nc = self.L, self.ev, self.sp, self.sr, self.nc
        core_shape = [*self.batch, self.t, ev]
        w = nc * L
        with T.serial(0, self.tm // sr) as rg, T.serial(0, ev // w) as eb:
            acc = self.buf["pacc"]
            for t in range(sr * nc):
                T.buffer_store(acc, self.zero, [self.lanes(t * L)])
            hi = ncol
            if self.g.offset is not None:
                hi = tirx.min(i0 + rg * sr + (sr + self.g.offset), self.s)
            with T.serial(0, hi) as j:  # the keys this sub-tile's rows see
                vv = [vl[self.lanes(j * ev + eb * w + c * L)] for c in range(nc)]
                for r in range(sr):
                    pr = self.vec(sc[(rg * sr + r) * sp + j])
                    for c in range(nc):
                        a = self.lanes((r * nc + c) * L)
                        T.buffer_store(acc, acc[a] + pr * vv[c], [a])
            for r in range(sr):
                for c in range(nc):
                    with T.vectorized(0, L) as lane:
                        at = [*b, i0 + rg * sr + r, eb * w + c * L + lane]
                        T.buffer_store(out, acc[(r * nc + c) * L + lane] * inv[rg * sr + r],
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
