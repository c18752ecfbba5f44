"""Names and helpers every integer TE builder shares: the ``rq.kernel``/``rq.stage``
annotations, block counting, and :func:`prim_func` for standalone kernels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import T, te, tirx, tvm

__all__ = ["KERNELS", "KERNEL_ATTR", "STAGE_ATTR", "prim_func"]


KERNEL_ATTR = "rq.kernel"
STAGE_ATTR = "rq.stage"
#: Kernel kinds (values of ``rq.kernel``); the IR op is ``rq.<kind>``.
KERNELS = (
    "quantize",
    "int_matmul_core",
    "int_matmul",
    "xnor_popcount_core",
    "xnor_popcount_matmul",
    "sparse24_core",
    "sparse24_matmul",
    "qbmm",
    "wo_matmul",
    "pack_weights",
)
Tensor = Any  # te.Tensor; TVM ships no type stubs


# -- helpers ------------------------------------------------------------------------------

#: TVM (0.27, ``LowerTVMBuiltin``) keeps a *global*-scope allocation of fewer bytes than this
#: on the stack: an ``alloca`` that LLVM promotes to registers. Any other allocation, and
#: every "local"-scope one whatever its size, becomes a ``TVMBackendAllocWorkspace`` /
#: ``TVMBackendFreeWorkspace`` pair of calls each time its scope runs (e.g. per column group
#: of a ``T.parallel`` loop): ~23 ns per pair on Zen 4 (``benchmarks/workspace_calls.py``).
STACK_BYTES = 1024


def scratch(n: Any, dtype: str, *, stack: bool = True) -> Any:
    """A kernel's 1-D scratch buffer of ``n`` ``dtype`` elements (accumulators, tiles):
    "global" scope where it fits :data:`STACK_BYTES` (a stack ``alloca``, promoted to
    registers), else "local" (a workspace, one heap call pair per execution of its scope).
    ``stack=False``: a workspace whatever the size, for accumulators that measured faster
    in memory than in the registers LLVM then spills."""
    t = tvm.DataType(dtype)
    small = stack and isinstance(n, int) and n * t.bits * t.lanes // 8 < STACK_BYTES
    return T.decl_buffer((n,), dtype, scope="global" if small else "local")


def _f32(v: float) -> Any:
    return tirx.const(v, "float32")


def _f64(v: float) -> Any:
    return tirx.const(v, "float64")


def _shape(t: Tensor) -> list[Any]:
    """Static dims as ints; a symbolic build's dynamic dims (``targets/tvm/symbolic.py``) as
    the TIR expressions they are."""
    return [int(d) if isinstance(d, (int, tirx.IntImm)) else d for d in t.shape]


def dim(d: Any) -> Any:
    """A static dim as an int; a symbolic build's dynamic dim (the row count) as the TIR
    expression it is: kernels with row loops take either (``targets/tvm/symbolic.py``)."""
    return int(d) if isinstance(d, (int, tirx.IntImm)) else d


def _nblocks(k: int, block: int, what: str) -> int:
    if block < 1 or k % block:
        raise NumericsError(f"{what}: K={k} is not a multiple of block={block}.")
    return k // block


def _attrs(kernel: str, block: int, **extra: Any) -> dict[str, Any]:
    return {KERNEL_ATTR: kernel, "rq.block": block, **extra}


def _pack_attrs(block: int) -> dict[str, Any]:
    """The stages of a weight-pack PrimFunc (``rq.kernel = "pack_weights"``)."""
    return {**_attrs("pack_weights", block), STAGE_ATTR: "pack"}


def _stage(name: str) -> dict[str, Any]:
    return {STAGE_ATTR: name}


def prim_func(args: Sequence[Tensor], *, name: str, kernel: str, block: int, **attrs: Any) -> Any:
    """``te.create_prim_func(args)`` named ``name`` with attrs ``rq.kernel``/``rq.block``.

    Args:
        args: input placeholders then outputs, in calling order.
        name: the ``global_symbol`` (the function name in the built library).
        kernel: one of :data:`KERNELS`.
        block: block size along K.
        attrs: extra ``rq.*`` attributes (written as given).
    """
    f = te.create_prim_func(list(args))
    return f.with_attrs({"global_symbol": name, KERNEL_ATTR: kernel, "rq.block": block, **attrs})
