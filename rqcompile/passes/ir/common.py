"""Small helpers the IR passes share: rebuild a module with new functions or annotations."""

from __future__ import annotations

from collections.abc import Mapping

from rqcompile.ir.core import AttrValue, Func, Module, Op

__all__ = ["annotate", "replace_func"]


def replace_func(mod: Module, func: Func) -> Module:
    """``mod`` with the function of ``func``'s name replaced by ``func``."""
    return mod.replace(funcs=tuple(func if f.name == func.name else f for f in mod.funcs))


def annotate(
    mod: Module, func: Func, marks: Mapping[int, Mapping[str, AttrValue | None]]
) -> tuple[Module, bool]:
    """Set annotations on ops of ``func`` by index (``{3: {"kernel": "quantize.avx2"}}`` sets
    ``rq.kernel``; ``None`` removes one); returns the module and whether anything changed."""
    if not marks:
        return mod, False
    ops: list[Op] = list(func.ops)
    for i, changes in marks.items():
        ops[i] = ops[i].annotate(**changes)
    changed = any(a != b for a, b in zip(ops, func.ops, strict=True))
    if not changed:
        return mod, False
    return replace_func(mod, Func(func.name, func.args, tuple(ops), func.outputs)), True
