"""``fold-constants``: evaluate ops whose operands are all constants, at convert time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rqcompile.ir.core import Func, Module, Op, Value
from rqcompile.ir.semantics import KERNELS, evaluate_op
from rqcompile.passes.infra import PassResult, register_pass

__all__ = ["FoldConstants"]


@register_pass
@dataclass(frozen=True)
class FoldConstants:
    """fold-constants: replace an op whose operands are all ``rq.const`` by a new constant.

    Before:  %0 = "rq.const"() {name = "w"}
             %1 = "rq.permute"(%0) {dims = [1, 0]}
    After:   %1 = "rq.const"() {name = "w.folded1"}     // the permuted tensor, computed once
    The value comes from the IR's own semantics (``ir/semantics.py``, what the reference
    target runs), so every target sees the number the oracle computes. Only ops whose
    result takes no more bytes than their operands together are folded (``max_growth``),
    so a broadcast or a dequantization never inflates the weights; ``rq.const`` ops the fold leaves unread are
    removed by ``eliminate-dead-code``.
    Numerics: exact with respect to the reference target.
    """

    name: ClassVar[str] = "fold-constants"
    max_growth: float = 1.0

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        consts = dict(mod.constants)
        funcs = []
        changed = False
        for f in mod.funcs:
            known: dict[int, torch.Tensor] = {}
            ops: list[Op] = []
            for op in f.ops:
                if op.name == "rq.const":
                    known[op.result.id] = consts[str(op.attr("name"))]
                    ops.append(op)
                    continue
                args = [known.get(v.id) for v in op.operands]
                if not op.operands or any(a is None for a in args) or op.name not in KERNELS:
                    ops.append(op)
                    continue
                tensors = tuple(a for a in args if a is not None)
                results = evaluate_op(op, tensors)
                if _nbytes(results) > self.max_growth * _nbytes(tensors):
                    ops.append(op)
                    continue
                for r, t in zip(op.results, results, strict=True):
                    cname = _fresh(consts, f"{_base(op)}.folded{r.id}")
                    consts[cname] = t.contiguous()
                    known[r.id] = consts[cname]
                    attrs = {"name": cname, "dtype": r.type.dtype,
                             "shape": tuple(int(d) for d in r.type.shape)}  # type: ignore[arg-type]
                    ops.append(Op("rq.const", (), (Value(r.id, r.type),), attrs, op.loc))
                changed = True
            funcs.append(Func(f.name, f.args, tuple(ops), f.outputs))
        if not changed:
            return PassResult(mod, False)
        return PassResult(Module(tuple(funcs), consts), True)


def _nbytes(ts: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _base(op: Op) -> str:
    """A readable stem for a folded constant: the layer key of the op, else ``const``."""
    key = getattr(op.loc, "layer", None) if op.loc is not None else None
    return str(key) if key else "const"


def _fresh(consts: dict[str, torch.Tensor], name: str) -> str:
    out, i = name, 1
    while out in consts:
        out, i = f"{name}_{i}", i + 1
    return out
