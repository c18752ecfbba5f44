"""``pad-columns``: give integer matmuls whose output width fits no panel a padded width.

Every packed CPU kernel walks output columns in panels (8 columns for the AVX2/VNNI integer
panels, 32 for AMX tiles, 64 for the AVX-512 weight-only panels); a layer whose ``N`` is not
a multiple falls back to the generic TE kernel, which is 10-100x slower. The common case is
a language model's head: GPT-2's vocabulary is 50257, and its W4 head took 2.4 s of a 2.4 s
prefill at 256 tokens (``benchmarks/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rqcompile.ir.core import Func, Module, Op, Value
from rqcompile.passes.infra import PassResult, register_pass

__all__ = ["PadColumns"]

#: matmul op → index of its first weight-side operand (all later operands are weight-side,
#: with N as their first dim)
_WEIGHT_FROM = {"rq.int_matmul": 3, "rq.xnor_popcount_matmul": 3, "rq.sparse24_matmul": 3,
                "rq.wo_matmul": 1}  # fmt: skip


@register_pass
@dataclass(frozen=True)
class PadColumns:
    """pad-columns: pad a constant-weight integer matmul's ``N`` up to a multiple of
    ``multiple`` with zero weights and slice the result back.

    Before:  %9 = "rq.wo_matmul"(%8, %w, %s, %c) : ... -> tensor<256x50257xf32>
    After:   %10 = "rq.wo_matmul"(%8, %w.pad, %s.pad, %c.pad) : ... -> tensor<256x50304xf32>
             %9 = "rq.slice"(%10) {axis = 1, start = 0, stop = 50257}
    The padded columns have zero codes, scales, offsets and code sums, so they compute 0 and
    the kept columns are computed exactly as before (each column is independent). Layers of
    at most ``multiple`` columns are left alone (a padded tiny head would do more work than
    its generic kernel). Runs before select-kernels, so the kernel rows see the padded width.
    Numerics: exact.
    """

    name: ClassVar[str] = "pad-columns"
    multiple: int = 64

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        consts = dict(mod.constants)
        funcs, changed = [], False
        old_names: set[str] = set()
        for f in mod.funcs:
            const_of = {op.result.id: op for op in f.ops if op.name == "rq.const"}
            ids = [a.id for a in f.args] + [v.id for op in f.ops for v in op.results]
            next_id = 1 + max(ids, default=0)
            ops: list[Op] = []
            replaced: set[int] = set()
            for op in f.ops:
                first = _WEIGHT_FROM.get(op.name)
                n = op.result.type.shape[-1] if first is not None else None
                weights = op.operands[first:] if first is not None else ()
                if (first is None or not isinstance(n, int) or n <= self.multiple
                        or n % self.multiple == 0
                        or not all(w.id in const_of for w in weights)):  # fmt: skip
                    ops.append(op)
                    continue
                npad = -(-n // self.multiple) * self.multiple
                padded = []
                for w in weights:
                    cop = const_of[w.id]
                    cname = f"{cop.attr('name')}.pad{npad}"
                    if cname not in consts:
                        t = consts[str(cop.attr("name"))]
                        extra = torch.zeros((npad - n, *t.shape[1:]), dtype=t.dtype)
                        consts[cname] = torch.cat([t, extra]).contiguous()
                    shape = (npad, *(int(d) for d in w.type.shape[1:]))  # type: ignore[arg-type]
                    v = Value(next_id, w.type.with_shape(shape))
                    next_id += 1
                    ops.append(Op("rq.const", (), (v,),
                                  {"name": cname, "dtype": w.type.dtype, "shape": shape},
                                  cop.loc))  # fmt: skip
                    padded.append(v)
                    replaced.add(w.id)
                    old_names.add(str(cop.attr("name")))
                wide = Value(next_id, op.result.type.with_shape((*op.result.type.shape[:-1], npad)))
                next_id += 1
                ops.append(Op(op.name, (*op.operands[:first], *padded), (wide,), op.attrs, op.loc))
                ops.append(Op("rq.slice", (wide,), op.results,
                              {"axis": op.result.type.rank - 1, "start": 0, "stop": int(n),
                               "step": 1}, op.loc))  # fmt: skip
                changed = True
            # the unpadded weights, where nothing else reads them, leave the module
            read = {v.id for op in ops for v in op.operands} | {v.id for v in f.outputs}
            ops = [op for op in ops if not (op.name == "rq.const" and op.result.id in replaced
                                            and op.result.id not in read)]  # fmt: skip
            funcs.append(Func(f.name, f.args, tuple(ops), f.outputs))
        if not changed:
            return PassResult(mod, False)
        named = {str(op.attr("name")) for f in funcs for op in f.ops if op.name == "rq.const"}
        kept = {k: v for k, v in consts.items() if k in named or k not in old_names}
        return PassResult(Module(tuple(funcs), kept), True)
