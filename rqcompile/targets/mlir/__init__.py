"""MLIR export of rq models through torch-mlir (optional: ``pip install 'rqcompile[mlir]'``).

``rq.export_mlir(model)`` returns one MLIR module in upstream dialects only (func, arith,
math, tensor, linalg): the integer kernels are integer ``linalg.generic`` ops written by
:mod:`rqcompile.targets.mlir.int_kernels`; everything else comes from torch-mlir's FX importer
(:mod:`rqcompile.targets.mlir.segments`). :func:`parse_mlir` reads such text back with the MLIR
Python bindings that torch-mlir ships, and :func:`run_mlir` JIT-runs it on the CPU.
The op-by-op mapping is in ``docs/mlir.md``.

Importing this package does not import torch-mlir; each function does on first call.
"""

from __future__ import annotations

from rqcompile.targets.mlir.bindings import have_torch_mlir, parse_mlir
from rqcompile.targets.mlir.execute import run_mlir
from rqcompile.targets.mlir.export import export_mlir

__all__ = ["export_mlir", "have_torch_mlir", "parse_mlir", "run_mlir"]
