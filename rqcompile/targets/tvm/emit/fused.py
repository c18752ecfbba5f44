"""Emitters of the fused groups the fusion passes marked (``rq.fused``): one attention kernel
per ``fuse-attention`` group, one quantize-with-prologue kernel per ``fuse-prologue`` chain."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rqcompile.errors import TargetError
from rqcompile.ir.core import Func, Module
from rqcompile.passes.ir.patterns.attention import AttentionGroup, find_attention
from rqcompile.passes.ir.patterns.prologue import PrologueChain, find_prologues
from rqcompile.targets.tvm.adapter import relax
from rqcompile.targets.tvm.emit.base import Emission, Expr, _dims
from rqcompile.targets.tvm.kernels.attention import te_attention
from rqcompile.targets.tvm.x86.prologue import te_prologue_quantize

__all__ = []


_ATTENTION_ATTRS = {"rq.kernel": "attention", "rq.scheduled": True}


def _marked(f: Func, kind: str, found: Sequence[Any], pass_name: str) -> list[Any]:
    """The groups of ``kind`` that ``pass_name`` marked (``rq.fused = [kind, id]``), in id
    order, as the pattern matcher ``found`` them (a marked op set that no longer matches
    one is an error: the IR changed after the pass ran)."""
    marks: dict[int, set[int]] = {}
    for i, op in enumerate(f.ops):
        mark = op.attr("rq.fused", None)
        if isinstance(mark, tuple) and len(mark) == 2 and mark[0] == kind:
            marks.setdefault(int(mark[1]), set()).add(i)
    by_ops = {g.ops: g for g in found} if marks else {}
    out = []
    for gid, ops in sorted(marks.items()):
        if frozenset(ops) not in by_ops:
            raise TargetError(f'the ops marked rq.fused = ["{kind}", {gid}] no longer match '
                              f"the {kind} pattern; rerun {pass_name}.")  # fmt: skip
        out.append(by_ops[frozenset(ops)])
    return out


def _attention_groups(ir: Module, f: Func) -> list[AttentionGroup]:
    """The attention groups ``fuse-attention`` marked."""
    if not any(op.attr("rq.fused", None) for op in f.ops):
        return []
    return _marked(f, "attention", find_attention(f, ir.constants), "fuse-attention")


def _emit_attention(cx: Emission, g: AttentionGroup, env: Mapping[int, Expr], f: Func) -> Expr:
    lanes = int(f.ops[g.anchor].attr("rq.lanes"))  # type: ignore[arg-type]
    args = [env[v.id] for v in g.inputs]
    # the group goes in a partial: emit_te only passes TVM-convertible keywords
    fn = functools.partial(te_attention, group=g, lanes=lanes)
    return cx.emit_te(fn, args, key=("attention", g.key, lanes), name="attention",
                      opaque=True, attrs=_ATTENTION_ATTRS)  # fmt: skip


# -- fused quantize prologues ---------------------------------------------------------------

#: PrimFunc attributes of a fused prologue quantize: already scheduled (its own parallel
#: row loop), so neither schedule phase touches it.
_PROLOGUE_ATTRS = {"rq.kernel": "prologue_quantize", "rq.scheduled": True}


def _prologue_chains(f: Func) -> list[PrologueChain]:
    """The chains ``fuse-prologue`` marked."""
    if not any(op.attr("rq.fused", None) for op in f.ops):
        return []
    return _marked(f, "prologue", find_prologues(f, lambda q: True), "fuse-prologue")


def _prologue_te(x: Any, residual: list[Any], params: list[Any], **kw: Any) -> Any:
    return te_prologue_quantize(x, params, residual=residual, **kw)


def _emit_prologue(cx: Emission, c: PrologueChain, env: dict[int, Expr]) -> None:
    """Emit the fused kernel of chain ``c``; bind the quantize's three results (and the
    residual sum ``c.h``, for its other users)."""
    x = c.inputs[0]
    k = _dims(x.type)[-1]
    rows = math.prod(_dims(x.type)) // k

    def as_rows(v: Any) -> Expr:  # full-size inputs as [rows, K]: a view, no copy
        e = env[v.id]
        return e if _dims(v.type) == [rows, k] else cx.emit(relax.op.reshape(e, [rows, k]))

    full = [x, *c.inputs[1 : 1 + c.residual]]
    residual = [as_rows(v) if _dims(v.type) != [k] else env[v.id] for v in full[1:]]
    params = [env[p.id] for p in c.inputs[1 + c.residual :]]
    a = c.quantize.attrs_dict
    fn = functools.partial(
        _prologue_te, prologue=c.prologue, bits=a["bits"], block=int(a["block"]),
        estimator=str(a["estimator"]), ridge_lambda=float(a["ridge_lambda"]),
        pack=str(a["pack"]), eps=c.eps, h_out=c.h is not None,
    )  # fmt: skip
    out = cx.emit_te(fn, [as_rows(x), residual, params], key=("prologue_quantize", c.key),
                     name="prologue_quantize", opaque=True, attrs=_PROLOGUE_ATTRS)  # fmt: skip
    results = [*c.quantize.results, *([c.h] if c.h is not None else [])]
    for i, r in enumerate(results):
        part = cx.emit(relax.TupleGetItem(out, i))
        built = [rows, k] if i == 3 else [rows, *_dims(r.type)[-1:]]  # the kernel's shape
        if _dims(r.type) != built:
            part = cx.emit(relax.op.reshape(part, _dims(r.type)))
        env[r.id] = part
