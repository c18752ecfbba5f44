"""Access to torch-mlir's MLIR Python bindings (``torch_mlir.ir``), imported on first use.

torch-mlir ships MLIR's own Python bindings with every upstream dialect registered (func,
arith, math, tensor, linalg, ...), a pass manager and an LLVM ``ExecutionEngine``. It is an
optional dependency (``pip install 'rqcompile[mlir]'``, about 80 MB); ``import rqcompile``
never loads it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from rqcompile.errors import ParseError, TargetError

__all__ = ["have_torch_mlir", "parse_mlir", "require_torch_mlir"]


def have_torch_mlir() -> bool:
    """Whether the ``torch-mlir`` package is importable (without importing it)."""
    return importlib.util.find_spec("torch_mlir") is not None


def require_torch_mlir() -> Any:
    """Import and return ``torch_mlir.ir``.

    Raises:
        TargetError: torch-mlir is not installed (the message says how to install it).
    """
    if not have_torch_mlir():
        raise TargetError(
            "MLIR export needs torch-mlir, which is not installed. Install it with "
            "pip install 'rqcompile[mlir]' (package torch-mlir; it does not replace torch)."
        )
    from torch_mlir import ir

    return ir


def parse_mlir(text: str, context: Any = None) -> Any:
    """Parse and verify MLIR ``text`` with torch-mlir's bindings into a ``torch_mlir.ir.Module``.

    Args:
        text: MLIR in any upstream dialect (e.g. the output of ``rq.export_mlir``).
        context: a ``torch_mlir.ir.Context`` to parse into (a fresh one by default; keep it
            alive as long as the module is used).

    Raises:
        TargetError: torch-mlir is not installed.
        ParseError: the text does not parse or verify (MLIR's diagnostics are in the message).
    """
    ir = require_torch_mlir()
    ctx = context if context is not None else ir.Context()
    try:
        with ctx:
            return ir.Module.parse(text)
    except Exception as e:  # MLIRError carries the diagnostics
        raise ParseError(f"MLIR text does not parse or verify: {e}") from e
