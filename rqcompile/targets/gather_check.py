"""Range checks at every gather (``rq.embedding``), for every target.

A token id outside ``[0, vocab)`` has no row to gather: the reference target's ``F.embedding``
raised a raw ``IndexError`` and TVM's ``take`` clamps silently (id 25 of a 20-row table reads
row 19). Ids that are a model input are checked in ``CompiledModule._check``; ids that reach
the gather through ``reshape``/``view``/arithmetic (``self.emb(ids.reshape(-1))``,
``self.emb(ids + offset)``) are checked here, the same way on every target: before a call runs,
the ops that compute each gather's ids (its backward slice, a few cheap integer ops) are
evaluated with the reference kernels and the result's range is compared with the table.

A gather whose ids come from heavy work (a matmul, a quantize: ids computed by the model
itself) is not pre-checked; the reference kernel (``targets/reference.py``) still raises
``InputError`` there. ``unchecked`` lists such gathers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rqcompile.errors import InputError
from rqcompile.ir.core import Func, Op
from rqcompile.ir.semantics import check_ids

__all__ = ["GatherCheck", "check_ids"]

#: ops cheap enough to replay on every call to find the ids a gather will see
_CHEAP = frozenset(
    {
        "rq.reshape", "rq.permute", "rq.slice", "rq.concat", "rq.add", "rq.sub", "rq.mul",
        "rq.div", "rq.add_scalar", "rq.mul_scalar", "rq.cast", "rq.broadcast_to", "rq.const",
    }
)  # fmt: skip
MAX_SLICE_OPS = 32


@dataclass(frozen=True)
class _Gather:
    ops: tuple[Op, ...]  # the backward slice of the ids, in program order
    ids_id: int
    vocab: int
    where: str


class GatherCheck:
    """Pre-checks for the gathers of one function whose ids are computed from the inputs."""

    def __init__(self, func: Func, constants: dict[str, torch.Tensor]) -> None:
        self._args = tuple(v.id for v in func.args)
        self._constants = constants
        producer = {r.id: op for op in func.ops for r in op.results}
        order = {id(op): i for i, op in enumerate(func.ops)}
        arg_ids = set(self._args)
        gathers: list[_Gather] = []
        unchecked: list[str] = []
        for op in func.ops:
            if op.name != "rq.embedding":
                continue
            ids, table = op.operands[0], op.operands[1]
            vocab = table.type.shape[0]
            where = f"embedding {op.loc.layer!r}" if op.loc is not None else "an embedding"
            if ids.id in arg_ids or vocab is None:
                continue  # a model input: CompiledModule._check names the input
            sl = _slice(ids.id, producer, arg_ids)
            if sl is None:
                unchecked.append(where)
                continue
            sl.sort(key=lambda o: order[id(o)])
            gathers.append(_Gather(tuple(sl), ids.id, int(vocab), f"{where} (ids computed from "
                                   f"the inputs by {', '.join(o.name for o in sl)})"))  # fmt: skip
        self.gathers = tuple(gathers)
        self.unchecked = tuple(unchecked)

    def __bool__(self) -> bool:
        return bool(self.gathers)

    def __call__(self, inputs: Sequence[torch.Tensor]) -> None:
        from rqcompile.targets.reference import KERNELS

        for g in self.gathers:
            env: dict[int, torch.Tensor] = dict(zip(self._args, inputs, strict=False))
            for op in g.ops:
                if op.name == "rq.const":
                    outs: object = self._constants[str(op.attr("name"))]
                else:
                    outs = KERNELS[op.name](tuple(env[v.id] for v in op.operands), op.attrs_dict)
                outs_t = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
                env.update(zip((r.id for r in op.results), outs_t, strict=False))
            check_ids(env[g.ids_id], g.vocab, g.where)


def _slice(vid: int, producer: dict[int, Op], args: set[int]) -> list[Op] | None:
    """The ops computing value ``vid`` from the function's arguments, if few and cheap."""
    seen: dict[int, Op] = {}
    stack = [vid]
    while stack:
        v = stack.pop()
        if v in args:
            continue
        op = producer.get(v)
        if op is None or op.name not in _CHEAP:
            return None
        if id(op) in seen:
            continue
        seen[id(op)] = op
        if len(seen) > MAX_SLICE_OPS:
            return None
        stack.extend(o.id for o in op.operands)
    return list(seen.values())
