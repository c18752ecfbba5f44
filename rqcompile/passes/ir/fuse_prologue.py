"""``fuse-prologue``: mark ``[residual add →] norm/GELU → quantize`` chains for one kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rqcompile.ir.core import Module
from rqcompile.passes.infra import PassResult, register_pass
from rqcompile.passes.ir.common import annotate
from rqcompile.passes.ir.patterns.prologue import find_prologues

__all__ = ["FusePrologue"]


@register_pass
@dataclass(frozen=True)
class FusePrologue:
    """fuse-prologue: annotate the float op before an activation quantize for fusion.

    Before:  %4 = "rq.layer_norm"(%1, %2, %3) ...
             %5:3 = "rq.quantize"(%4) {..., rq.kernel = "quantize.avx2"}
    After:   both ops with ``rq.fused = ["prologue", 0]``
    Chains (``patterns/prologue.py``): ``quantize(layer_norm(r + y + b))``,
    ``quantize(layer_norm(x))``, ``quantize(gelu(y + b))``; ``ops`` says which end ops to
    fuse and ``kernels`` which quantize kernels can take a prologue (the AVX2 micro-kernel
    on llvm). The op's output then never reaches memory. Ops already in a fused group are
    left alone.
    Requires: select-kernels (it reads the quantize's ``rq.kernel``). Numerics: exact
    (the fused kernel computes the same floats as the ops apart).
    """

    name: ClassVar[str] = "fuse-prologue"
    ops: tuple[str, ...] = ("layer_norm",)
    kernels: tuple[str, ...] = ("quantize.avx2",)

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        changed = False
        kernels = set(self.kernels)
        for f in mod.funcs:
            taken = {i for i, op in enumerate(f.ops) if op.attr("rq.fused", None) is not None}

            def accept(q: Any) -> bool:
                return str(q.attr("rq.kernel", "")) in kernels

            marks: dict[int, dict[str, Any]] = {}
            gid = 0
            for c in find_prologues(f, accept):
                if c.prologue not in self.ops or c.ops & taken:
                    continue
                for i in c.ops:
                    marks[i] = {"fused": ("prologue", gid)}
                taken |= c.ops
                gid += 1
            mod, ch = annotate(mod, mod.func(f.name), marks)
            changed |= ch
        return PassResult(mod, changed)
