"""``fuse-attention``: mark the ops of each attention that one fused kernel computes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rqcompile.ir.core import Module
from rqcompile.passes.infra import PassResult, register_pass
from rqcompile.passes.ir.common import annotate
from rqcompile.passes.ir.patterns.attention import attention_fits, find_attention

__all__ = ["FuseAttention"]


@register_pass
@dataclass(frozen=True)
class FuseAttention:
    """fuse-attention: annotate ``softmax(q·kᵀ·scale [mask])·v`` groups for one kernel.

    Before:  %9 = "rq.matmul"(%7, %8) ... %12 = "rq.softmax"(%11) ... %13 = "rq.matmul"(%12, %6)
    After:   the same ops, each with ``rq.fused = ["attention", 0]``; the group's last op
             also carries ``rq.lanes = 8``
    The pattern (``patterns/attention.py``) takes the q/k/v split, bias and head transposes
    around the core too. A target that fuses attention emits one kernel for the marked ops;
    others ignore the marks. Only groups whose per-head working set fits the kernel's
    local buffers at ``lanes``-wide vectors are marked.
    Numerics: the fused kernel's floats differ from the unfused ops' by rounding only.
    """

    name: ClassVar[str] = "fuse-attention"
    lanes: int = 8

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        changed = False
        for f in mod.funcs:
            taken = {i for i, op in enumerate(f.ops) if op.attr("rq.fused", None) is not None}
            marks: dict[int, dict[str, Any]] = {}
            gid = 0
            for g in find_attention(f, mod.constants):
                if g.ops & taken or not attention_fits(g, self.lanes):
                    continue
                for i in g.ops:
                    marks[i] = {"fused": ("attention", gid)}
                marks[g.anchor]["lanes"] = self.lanes
                taken |= g.ops
                gid += 1
            mod, ch = annotate(mod, mod.func(f.name), marks)
            changed |= ch
        return PassResult(mod, changed)
