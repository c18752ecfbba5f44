"""Def-use index of one function: which op defines each value and which ops use it.

Pattern matchers over the IR (``targets/tvm/passes/ir/patterns/attention.py``, ``passes/ir/patterns/prologue.py``) and
the relax emitter ask the same two questions of a function, "who made this value" and "who
else reads it"; :class:`Uses` answers both from one pass over the ops.
"""

from __future__ import annotations

from rqcompile.ir.core import Func, Op, Value

__all__ = ["OUTPUT", "Uses"]

#: The use index standing for "a result of the function".
OUTPUT = -1


class Uses:
    """Producers and uses of a function's values: op indices, :data:`OUTPUT` for a result.

    Example:
        >>> from rqcompile.ir.builder import Builder
        >>> b = Builder()
        >>> x = b.arg("tensor<2x3xf32>")
        >>> y = b.op("rq.relu", x)
        >>> b.ret(y)
        >>> g = Uses(b.func())
        >>> g.op_of(y).name, g.uses[y.id], g.only_use(x)
        ('rq.relu', [-1], 0)
    """

    def __init__(self, f: Func) -> None:
        self.f = f
        self.producer: dict[int, int] = {}
        self.uses: dict[int, list[int]] = {}
        for i, op in enumerate(f.ops):
            for r in op.results:
                self.producer[r.id] = i
            for v in op.operands:
                self.uses.setdefault(v.id, []).append(i)
        for v in f.outputs:
            self.uses.setdefault(v.id, []).append(OUTPUT)

    def op_of(self, v: Value) -> Op | None:
        """The op that defines ``v`` (``None`` for a function argument)."""
        i = self.producer.get(v.id)
        return None if i is None else self.f.ops[i]

    def only_use(self, v: Value) -> int | None:
        """The index of the one op that reads ``v``; ``None`` if it has other readers or is a
        result of the function."""
        uses = self.uses.get(v.id, [])
        return uses[0] if len(uses) == 1 and uses[0] != OUTPUT else None

    def single_producer(self, v: Value) -> int | None:
        """The index of the op that defines ``v`` if ``v`` has exactly one use (a result of
        the function counts as one); else ``None``."""
        if len(self.uses.get(v.id, [])) != 1:
            return None
        return self.producer.get(v.id)
