"""``build_tvm``: rq IR → TVM phases → shared library bytes → :class:`CompiledModule`.

Where it sits: ``rq.build`` calls it for every non-reference target. It is generic: the
target-specific parts (which ``tvm.target.Target``, which phases, which CPU features) come
from :mod:`.pipelines`, and running the result from :mod:`.runtime`, the same code that loads
a saved artifact. The library is exported once, to bytes, so ``exe.save`` stores exactly
what runs (weights are not in it: they are parameters bound at run time).

Timing of each phase goes to ``logging.getLogger("rqcompile.targets.tvm.build")`` at DEBUG.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

from rqcompile.errors import RQError, TargetError
from rqcompile.ir.core import Module
from rqcompile.targets.compiled import CompiledModule
from rqcompile.targets.target import Target as RQTarget
from rqcompile.targets.tvm.pipelines import (
    features_for,
    library_suffix,
    pipeline_for,
    tvm_target,
)
from rqcompile.targets.tvm.runtime import compiled_module

__all__ = ["build_tvm", "export_bytes"]

_log = logging.getLogger(__name__)


def export_bytes(executable: Any, suffix: str = ".so") -> bytes:
    """``executable.export_library`` to a temporary file, read back as bytes."""
    with tempfile.TemporaryDirectory(prefix="rq-export-") as d:
        path = os.path.join(d, "kernels" + suffix)
        executable.export_library(path)
        with open(path, "rb") as f:
            return f.read()


def build_tvm(ir: Module, target: RQTarget) -> CompiledModule:
    """Build ``ir`` for a TVM ``target`` (today: ``llvm``, host or cross).

    Args:
        ir: a verified module with static shapes (``rq.convert``'s result).
        target: the parsed target; ``{"kind": "llvm"}`` without ``mcpu``/``mtriple`` is
            this machine.

    Returns:
        A :class:`CompiledModule` with the library bytes and the CPU features it needs. For a
        machine other than this one it builds but raises ``TargetError`` when called.

    Raises:
        TargetError: the target has no pipeline, or a TVM phase failed (the message names
            the phase and the target; TVM's error is the ``__cause__``).
        UnsupportedOpError: ops the emitter does not know, all listed at once.
    """
    ttarget = tvm_target(target)
    x: Any = ir
    for phase in pipeline_for(ttarget):
        t0 = time.perf_counter()
        try:
            x = phase.run(x)
        except RQError:
            raise
        except Exception as e:  # TVM's own error types; keep them as the cause
            raise TargetError(
                f"TVM build phase {phase.name!r} failed for target {ttarget}: "
                f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            ) from e
        _log.debug("phase %s: %.3f s", phase.name, time.perf_counter() - t0)
    t0 = time.perf_counter()
    lib = export_bytes(x, library_suffix(target.to_dict()))
    _log.debug("export: %.3f s (%d bytes)", time.perf_counter() - t0, len(lib))
    return compiled_module(ir, target, lib, features_for(ttarget), executable=x, tvm_target=ttarget)
