"""Run exported MLIR on the CPU with upstream passes and MLIR's LLVM ``ExecutionEngine``.

This is a *checking* path, not a fast one: it proves that the exported text means what the
reference target computes. The pipeline is upstream MLIR only (no torch-mlir passes):
inline the calls, bufferize (one-shot, whole module), turn the results of ``main`` into
out-parameters, lower ``linalg`` to loops, then everything to the LLVM dialect, and JIT it.
``math`` ops without an LLVM intrinsic (``erf`` in exact GELU) call libm.

Copies between strided buffers (slices, concatenation) lower to a call to ``memrefCopy``,
which MLIR's C runner library provides; torch-mlir's wheel does not ship that library, so
:func:`_memref_copy` provides the same function through a ctypes callback.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch

from rqcompile.errors import InputError
from rqcompile.targets.mlir.bindings import parse_mlir, require_torch_mlir

__all__ = ["LOWERING", "run_mlir"]

#: The upstream pass pipeline from linalg-on-tensors to the LLVM dialect.
LOWERING = (
    "builtin.module("
    "inline, "
    "one-shot-bufferize{bufferize-function-boundaries "
    "function-boundary-type-conversion=identity-layout-map}, "
    "buffer-results-to-out-params{modify-public-functions hoist-static-allocs}, "
    "func.func(convert-linalg-to-loops), "
    "lower-affine, convert-scf-to-cf, expand-strided-metadata, finalize-memref-to-llvm, "
    "convert-math-to-llvm, convert-math-to-libm, convert-arith-to-llvm, "
    "convert-func-to-llvm, convert-cf-to-llvm, reconcile-unrealized-casts)"
)

_I64P = ctypes.POINTER(ctypes.c_int64)
_COPY_FN = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)


def _strided(unranked: int, elem: int) -> np.ndarray:
    """A numpy view of a memref given its unranked descriptor ``{i64 rank; ptr descriptor}``."""
    rank = ctypes.cast(unranked, _I64P)[0]
    desc = ctypes.cast(ctypes.cast(unranked + 8, ctypes.POINTER(ctypes.c_void_p))[0], _I64P)
    aligned, offset = desc[1], desc[2]
    sizes = [desc[3 + i] for i in range(rank)]
    strides = [desc[3 + rank + i] for i in range(rank)]
    if 0 in sizes:
        return np.zeros(sizes, dtype=f"V{elem}")
    span = 1 + sum((n - 1) * abs(st) for n, st in zip(sizes, strides, strict=True))
    base = np.ctypeslib.as_array(
        (ctypes.c_uint8 * (span * elem)).from_address(aligned + offset * elem)
    )
    flat = base.view(f"V{elem}")
    return np.lib.stride_tricks.as_strided(flat, sizes, [st * elem for st in strides])


def _memref_copy(elem: int, src: int, dst: int) -> None:
    """``memrefCopy(elemSize, UnrankedMemRef *src, UnrankedMemRef *dst)`` of MLIR's runner utils."""
    _strided(dst, elem)[...] = _strided(src, elem)


_COPY = _COPY_FN(_memref_copy)  # module-level: must outlive every engine that calls it

_NUMPY = {
    "f32": np.float32,
    "f64": np.float64,
    "i8": np.int8,
    "i32": np.int32,
    "i64": np.int64,
    "i1": np.bool_,
}


def _signature(ir: Any, module: Any, name: str) -> tuple[list[Any], list[Any]]:
    for op in module.body.operations:
        if op.operation.name == "func.func" and str(op.attributes["sym_name"]) == f'"{name}"':
            ft = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
            op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
            return [ir.RankedTensorType(t) for t in ft.inputs], [
                ir.RankedTensorType(t) for t in ft.results
            ]
    raise InputError(f"run_mlir: the module has no function @{name}.")


def _np(t: Any) -> tuple[tuple[int, ...], Any]:
    return tuple(t.shape), _NUMPY[str(t.element_type)]


def run_mlir(text: str, *inputs: torch.Tensor, func: str = "main") -> tuple[torch.Tensor, ...]:
    """JIT-compile MLIR ``text`` (linalg on tensors) and run ``@func`` on torch tensors.

    Args:
        text: e.g. the output of ``rq.export_mlir``.
        *inputs: one CPU tensor per argument of ``@func``, with its exact shape and dtype
            (unsigned integer tensors are passed bit for bit to the signless ``iN`` of MLIR).
        func: the entry point.

    Returns:
        The results of ``@func`` as torch tensors.

    Raises:
        TargetError: torch-mlir is not installed.
        InputError: wrong number, shape or dtype of inputs.
    """
    ir = require_torch_mlir()
    from torch_mlir import passmanager
    from torch_mlir.execution_engine import ExecutionEngine
    from torch_mlir.runtime import get_ranked_memref_descriptor

    ctx = ir.Context()
    module = parse_mlir(text, ctx)
    with ctx:
        ins, outs = _signature(ir, module, func)
        if len(inputs) != len(ins):
            raise InputError(f"run_mlir: @{func} takes {len(ins)} inputs, got {len(inputs)}.")
        arrays = []
        for i, (x, t) in enumerate(zip(inputs, ins, strict=True)):
            shape, dt = _np(t)
            a = np.ascontiguousarray(x.detach().cpu().numpy())
            if a.dtype.kind == "u" and np.dtype(dt).kind == "i" and a.itemsize == dt().itemsize:
                a = a.view(dt)  # MLIR integers are signless: uint8/uint32 bits pass unchanged
            if a.shape != shape or a.dtype != dt:
                raise InputError(
                    f"run_mlir: input {i} of @{func} must be {np.dtype(dt).name}{list(shape)}, "
                    f"got {a.dtype.name}{list(a.shape)}."
                )
            arrays.append(a)
        results = [np.zeros(*_np(t)[:1], dtype=_np(t)[1]) for t in outs]
        passmanager.PassManager.parse(LOWERING).run(module.operation)
        engine = ExecutionEngine(module, opt_level=0)
        engine.raw_register_runtime("memrefCopy", ctypes.cast(_COPY, ctypes.c_void_p))
        args = [
            ctypes.pointer(ctypes.pointer(get_ranked_memref_descriptor(a)))
            for a in (*arrays, *results)
        ]
        engine.invoke(func, *args)
    return tuple(torch.from_numpy(r) for r in results)
