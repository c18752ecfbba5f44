"""KV-cache kernels for decode: write one row into the cache in place, attend over ``pos + 1`` rows.

Where it sits: the ``kv-cache`` pass (``passes/ir/kv_cache.py``) gives ``decode`` an
``rq.cache_write`` per cached operand and, where the attention's mask hides exactly the keys
after ``pos``, an ``rq.cache_attention``; ``emit/cache_ops.py`` emits these two PrimFuncs.
Both are written directly in TIR (the loop bounds depend on ``pos``, a run-time tensor), carry
``rq.scheduled`` (neither schedule phase touches them) and are opaque to fusion.

* :func:`cache_write_func` ``(cache, row, pos)`` stores ``row`` at ``pos`` along the sequence
  axis and writes nothing else. Relax calls it with ``call_tir_inplace``: the cache is the
  caller's tensor (the generator's, passed by DLPack), so a decode step moves one row per
  cached operand instead of producing a new cache (a batch-1 GPT-2-small step wrote 19 MB of
  new caches and read as much again, more than the 1-bit weights).
* :func:`cache_attention_func` ``(q, k, v, pos) -> out``: per leading index (batch x head,
  the parallel loop) with ``n = pos[b] + 1`` live keys: scores ``q·k_j·scale`` for ``j < n``
  only, their max, ``exp`` (TOPI's ``fast_exp`` polynomial, :func:`fast_math.exp_poly`) and
  sum, then ``Σ_j p_j·v_j / sum`` over the same ``n`` rows. A key cache laid out ``kᵀ``
  ``(E, T)`` is read ``E`` contiguous runs of ``n``; one laid out ``(T, E)`` is read row by row
  with 8-lane partial dot products. Rows ``>= n`` (stale entries, prefill's padding) are never
  read.

Numerics: float32; the sums are reassociated against the reference's masked softmax over all
``T`` rows (where hidden keys weigh exactly 0), ``1/sum`` is applied after ``P·v``, and
``exp`` is the polynomial the fused prefill attention uses: results agree to ~1e-6 relative.
Positions are clamped into ``[0, T)`` before any access (the generator checks them first).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from rqcompile.targets.tvm.adapter import IRBuilder, T, prim_func_builder, tirx
from rqcompile.targets.tvm.kernels.attention import _hreduce
from rqcompile.targets.tvm.kernels.common import scratch
from rqcompile.targets.tvm.kernels.fast_math import exp_poly

__all__ = ["cache_attention_func", "cache_write_func"]

_F32 = "float32"
#: PrimFunc attributes: opaque to FuseOps (``op_pattern`` 8), already scheduled
_ATTRS = {"op_pattern": 8, "tirx.noalias": True, "rq.scheduled": True}


def _args(shapes: Sequence[tuple[str, Sequence[int], str]]) -> list[Any]:
    """PrimFunc tensor parameters, and a flat view of each (same memory)."""
    bufs = [prim_func_builder.arg(name, prim_func_builder.buffer(list(shape), dtype))
            for name, shape, dtype in shapes]  # fmt: skip
    return [
        T.decl_buffer((math.prod(shape),), dtype, data=buf.data)
        for buf, (_, shape, dtype) in zip(bufs, shapes, strict=True)
    ]


def _position(pos: Any, b: Any, length: int) -> Any:
    """``pos[b]`` as int64, clamped into ``[0, length)``."""
    p = tirx.Cast("int64", pos[b])
    return tirx.max(tirx.min(p, tirx.const(length - 1, "int64")), tirx.const(0, "int64"))


def cache_write_func(
    shape: Sequence[int], axis: int, dtype: str, n_pos: int, pos_dtype: str
) -> Any:
    """PrimFunc ``(cache, row, pos)``: ``cache[..., pos, ...] = row`` along ``axis``, in place.

    ``n_pos`` 1: one position for every row; else one per index of axis 0 (the batch)."""
    dims = [int(d) for d in shape]
    row = [1 if i == axis else d for i, d in enumerate(dims)]
    outer, length, inner = math.prod(dims[:axis]), dims[axis], math.prod(dims[axis + 1 :])
    per_batch = math.prod(dims[1:axis]) if n_pos > 1 else outer
    with IRBuilder() as ib, prim_func_builder.prim_func():
        prim_func_builder.func_name("cache_write")
        prim_func_builder.func_attr({**_ATTRS, "rq.kernel": "cache_write"})
        cache, new, pos = _args([("cache", dims, dtype), ("row", row, dtype),
                                 ("pos", (n_pos,), pos_dtype)])  # fmt: skip
        with T.serial(0, outer) as o:
            p = T.bind(_position(pos, o // per_batch if n_pos > 1 else 0, length))
            with T.serial(0, inner) as i:
                at = (tirx.Cast("int64", o) * length + p) * inner + i
                T.buffer_store(cache, new[o * inner + i], [at])
    return ib.get()


def cache_attention_func(
    lead: Sequence[int], e: int, length: int, ev: int, key_axis: int, scale: float,
    n_pos: int, pos_dtype: str, lanes: int = 8,
) -> Any:  # fmt: skip
    """PrimFunc ``(q, k, v, pos, out)`` of ``rq.cache_attention`` (module docstring)."""
    nh = math.prod(lead)
    per_batch = math.prod(lead[1:]) if n_pos > 1 else nh
    k_shape = (*lead, e, length) if key_axis == -1 else (*lead, length, e)
    ninf, zero = tirx.const(-math.inf, _F32), tirx.const(0.0, _F32)
    with IRBuilder() as ib, prim_func_builder.prim_func():
        prim_func_builder.func_name("cache_attention")
        prim_func_builder.func_attr({**_ATTRS, "rq.kernel": "cache_attention"})
        q, k, v, pos, out = _args([
            ("q", (*lead, 1, e), _F32), ("k", k_shape, _F32), ("v", (*lead, length, ev), _F32),
            ("pos", (n_pos,), pos_dtype), ("out", (*lead, 1, ev), _F32),
        ])  # fmt: skip
        sp = -(-length // lanes) * lanes  # scores padded to whole vectors
        with T.parallel(0, nh) as h:
            sc = scratch(sp, _F32)
            vec = T.decl_buffer((lanes,), _F32, scope="global")  # running max, then sum
            acc = scratch(ev, _F32)
            st = T.decl_buffer((2,), _F32, scope="global")  # running max, sum
            n = _position(pos, h // per_batch if n_pos > 1 else 0, length) + 1
            kb, vb = tirx.Cast("int64", h) * (e * length), tirx.Cast("int64", h) * (length * ev)
            if key_axis == -1:  # kᵀ (E, T): E contiguous runs of n keys
                with T.serial(0, n) as j:
                    T.buffer_store(sc, zero, [j])
                with T.serial(0, e) as d:
                    qd = T.bind(q[h * e + d])
                    with T.serial(0, n) as j:
                        T.buffer_store(sc, sc[j] + qd * k[kb + d * length + j], [j])
            elif e % lanes == 0:  # (T, E): one row per key, lanes-wide partial dot products
                with T.serial(0, n) as j:
                    part = tirx.Broadcast(zero, lanes)
                    for c in range(e // lanes):
                        qv = q[tirx.Ramp(h * e + c * lanes, 1, lanes)]
                        kv = k[tirx.Ramp(kb + j * e + c * lanes, 1, lanes)]
                        part = part + qv * kv
                    T.buffer_store(sc, _hreduce(T.bind(part), lanes, operator.add), [j])
            else:
                with T.serial(0, n) as j:
                    T.buffer_store(sc, zero, [j])
                    with T.serial(0, e) as d:
                        T.buffer_store(sc, sc[j] + q[h * e + d] * k[kb + j * e + d], [j])
            # softmax in whole vectors; lanes at j >= n (unwritten) are masked out
            nb = (n + (lanes - 1)) // lanes
            at = tirx.Ramp(tirx.const(0, "int64"), tirx.const(1, "int64"), lanes)
            lane0 = tirx.Ramp(0, 1, lanes)
            T.buffer_store(vec, tirx.Broadcast(ninf, lanes), [lane0])
            with T.serial(0, nb) as jb:
                live = at + tirx.Broadcast(jb * lanes, lanes) < tirx.Broadcast(n, lanes)
                idx = tirx.Ramp(jb * lanes, 1, lanes)
                scaled = sc[idx] * tirx.Broadcast(tirx.const(scale, _F32), lanes)
                x = T.bind(tirx.Select(live, scaled, tirx.Broadcast(ninf, lanes)))
                T.buffer_store(sc, x, [idx])
                T.buffer_store(vec, tirx.max(vec[lane0], x), [lane0])
            T.buffer_store(st, _hreduce(vec[lane0], lanes, tirx.max), [0])
            T.buffer_store(vec, tirx.Broadcast(zero, lanes), [lane0])
            m = T.bind(tirx.Broadcast(st[0], lanes))
            with T.serial(0, nb) as jb:
                live = at + tirx.Broadcast(jb * lanes, lanes) < tirx.Broadcast(n, lanes)
                idx = tirx.Ramp(jb * lanes, 1, lanes)
                p = T.bind(tirx.Select(live, exp_poly(sc[idx] - m), tirx.Broadcast(zero, lanes)))
                T.buffer_store(sc, p, [idx])
                T.buffer_store(vec, vec[lane0] + p, [lane0])
            T.buffer_store(st, _hreduce(vec[lane0], lanes, operator.add), [1])
            with T.vectorized(0, ev) as d:
                T.buffer_store(acc, zero, [d])
            with T.serial(0, n) as j:
                pj = T.bind(sc[j])
                with T.vectorized(0, ev) as d:
                    T.buffer_store(acc, acc[d] + pj * v[vb + j * ev + d], [d])
            inv = T.bind(tirx.const(1.0, _F32) / st[1])
            with T.vectorized(0, ev) as d:
                T.buffer_store(out, acc[d] * inv, [h * ev + d])
    return ib.get()
