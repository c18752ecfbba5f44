"""Intrinsic lowerings TVM 0.27's C backend lacks: ``fabs`` and ``popcount``.

TVM's C code generator lowers math intrinsics through the ``default`` rules, which cover
``exp``, ``sqrt``, ``nearbyint`` ... but not ``fabs`` (used by the binary/ternary grid of
``quantize``) or ``popcount`` (XNOR-popcount); the build then fails with "Unresolved call
tirx.fabs". :func:`register` adds ``c``-target rules mapping them to the C library /
GCC builtins. It runs once per process, before a ``c`` build (``pipelines.tvm_target``).
"""

from __future__ import annotations

import functools
from typing import Any

from rqcompile.targets.tvm.adapter import tirx

__all__ = ["register"]


def _dtype(e: Any) -> str:
    return str(e.ty)  # TVM 0.27 expressions carry a PrimType ``ty`` ("float32", "uint32")


def _fabs(op: Any) -> Any:
    x = op.args[0]
    name = "fabsf" if _dtype(x) == "float32" else "fabs"
    return tirx.call_pure_extern(_dtype(x), name, x)


def _popcount(op: Any) -> Any:
    """``__builtin_popcount`` declared exactly as GCC has it (``int (unsigned int)``).

    The C codegen declares every extern with the call's types; any other spelling
    "ambiguates" the builtin. 64-bit words are counted as two 32-bit halves.
    """
    x = op.args[0]

    def pc32(v: Any) -> Any:
        return tirx.call_pure_extern("int32", "__builtin_popcount", v.astype("uint32"))

    if _dtype(x).endswith("64"):
        u = x.astype("uint64")
        n = pc32(u & tirx.const(0xFFFFFFFF, "uint64")) + pc32(u >> tirx.const(32, "uint64"))
    else:
        n = pc32(x)
    return n.astype(_dtype(op))


@functools.cache
def register() -> None:
    """Register the ``c`` lowerings (idempotent)."""
    tirx.register_intrin_lowering("tirx.fabs", "c", f=_fabs, level=10)
    tirx.register_intrin_lowering("tirx.popcount", "c", f=_popcount, level=10)
