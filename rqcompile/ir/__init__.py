"""The rq integer IR: types, ops, functions, modules; verifier, printer and parser.

``rq.convert`` produces an :class:`Module` from a trained QAT graph and ``rq.build`` consumes
it. The IR imports neither ``torch.fx`` nor ``tvm``; see ``README.md`` next to this file.

Example:
    >>> from rqcompile.ir import Builder, Loc, TensorType, parse_module, print_module, verify
    >>> b = Builder()
    >>> x = b.arg(TensorType((None, 8), "f32"))
    >>> b.ret(b.op("rq.softmax", x, axis=-1, loc=Loc("head")))
    >>> m = b.module()
    >>> verify(m)
    >>> parse_module(print_module(m)) == m
    True
"""

from __future__ import annotations

from rqcompile.ir import ops_float as _ops_float  # noqa: F401  (registers the float ops)
from rqcompile.ir import ops_int as _ops_int  # noqa: F401  (registers the integer ops)
from rqcompile.ir import ops_more as _ops_more  # noqa: F401  (convert's ops: masked_fill, ...)
from rqcompile.ir.builder import Builder
from rqcompile.ir.core import AttrValue, Func, Loc, Module, Op, Value, ssa_names
from rqcompile.ir.ops import (
    AttrSpec,
    OpDef,
    all_ops,
    defop,
    find_op,
    get_op,
    register_op,
)
from rqcompile.ir.parser import parse_module
from rqcompile.ir.printer import print_func, print_module, print_op
from rqcompile.ir.types import DTYPES, TensorType
from rqcompile.ir.verify import collect_problems, verify

__all__ = [
    "DTYPES",
    "AttrSpec",
    "AttrValue",
    "Builder",
    "Func",
    "Loc",
    "Module",
    "Op",
    "OpDef",
    "TensorType",
    "Value",
    "all_ops",
    "collect_problems",
    "defop",
    "find_op",
    "get_op",
    "parse_module",
    "print_func",
    "print_module",
    "print_op",
    "register_op",
    "ssa_names",
    "verify",
]
