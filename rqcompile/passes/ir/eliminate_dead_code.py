"""``eliminate-dead-code``: drop ops whose results nothing reads, and constants no op reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rqcompile.ir.core import Func, Module
from rqcompile.passes.infra import PassResult, register_pass

__all__ = ["EliminateDeadCode"]


@register_pass
@dataclass(frozen=True)
class EliminateDeadCode:
    """eliminate-dead-code: remove every op none of whose results reaches an output.

    Before:  %1 = "rq.relu"(%0)   // %1 never used
             func.return %0
    After:   func.return %0
    Also drops module constants that no ``rq.const`` reads any more. rq ops have no side
    effects, so an op whose results are unused can always go.
    Numerics: exact.
    """

    name: ClassVar[str] = "eliminate-dead-code"

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        funcs = []
        changed = False
        for f in mod.funcs:
            live = {v.id for v in f.outputs}
            kept = []
            for op in reversed(f.ops):
                if any(r.id in live for r in op.results):
                    kept.append(op)
                    live.update(v.id for v in op.operands)
            changed |= len(kept) != len(f.ops)
            funcs.append(Func(f.name, f.args, tuple(reversed(kept)), f.outputs))
        read = {str(op.attr("name")) for f in funcs for op in f.ops if op.name == "rq.const"}
        consts = {n: t for n, t in mod.constants.items() if n in read}
        changed |= len(consts) != len(mod.constants)
        if not changed:
            return PassResult(mod, False)
        return PassResult(Module(tuple(funcs), consts), True)
