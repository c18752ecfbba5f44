"""Emitters of the KV-cache ops of ``decode``: ``rq.cache_write`` (in place) and
``rq.cache_attention`` (over the live prefix); the kernels are :mod:`..kernels.cache`.

``rq.cache_write`` becomes ``relax.call_tir_inplace`` with the cache as the in-place
argument: its result *is* the cache tensor the caller passed, updated in one row. That is
safe because the ``kv-cache`` pass gives each cache argument exactly one use, this write, and
every later read goes through its result. The IR op stays functional (the reference target
returns a new tensor); only the caller can tell, by looking at the tensor it passed.
"""

from __future__ import annotations

from rqcompile.ir.core import Op
from rqcompile.targets.tvm.adapter import relax
from rqcompile.targets.tvm.emit.base import TVM_DTYPES, Emission, Expr, _dims, _float, _int
from rqcompile.targets.tvm.kernels.cache import cache_attention_func, cache_write_func

__all__: list[str] = []


def _cache_write(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    c, _, pos = (v.type for v in op.operands)
    axis = _int(op, "axis") % c.rank
    key = ("cache_write", c, pos, axis)
    gv = cx.prim_func(key, "cache_write", lambda: cache_write_func(
        _dims(c), axis, TVM_DTYPES[c.dtype], _dims(pos)[0], TVM_DTYPES[pos.dtype]))  # fmt: skip
    out = relax.TensorType(_dims(c), TVM_DTYPES[c.dtype])
    return cx.emit(relax.call_tir_inplace(gv, list(xs), [0], out))


def _cache_attention(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    q, k, v, pos = (x.type for x in op.operands)
    key_axis = _int(op, "key_axis")
    lead = _dims(q)[:-2]
    e, ev, length = _dims(q)[-1], _dims(v)[-1], _dims(v)[-2]
    scale = _float(op, "scale")
    key = ("cache_attention", q, k, v, pos, key_axis, scale)
    gv = cx.prim_func(key, "cache_attention", lambda: cache_attention_func(
        lead, e, length, ev, key_axis, scale, _dims(pos)[0], TVM_DTYPES[pos.dtype]))  # fmt: skip
    return cx.emit(relax.call_tir(gv, list(xs), relax.TensorType([*lead, 1, ev], "float32")))
