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

from rqcompile.ir.core import Module
from rqcompile.ir.verify import verify
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.targets.compiled import CompiledModule
from rqcompile.targets.target import Target as RQTarget
from rqcompile.targets.tvm.pipelines import (
    Phase,
    features_for,
    library_suffix,
    pipeline_for,
    tvm_target,
)
from rqcompile.passes.ir.kv_cache import GENERATION_FUNCS, func_as_main, generation_funcs
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


def build_tvm(ir: Module, target: RQTarget, context: PassContext | None = None) -> CompiledModule:
    """Build ``ir`` for a TVM ``target`` (today: ``llvm``, host or cross).

    Args:
        ir: a verified module with static shapes (``rq.convert``'s result).
        target: the parsed target; ``{"kind": "llvm"}`` without ``mcpu``/``mtriple`` is
            this machine.

    Returns:
        A :class:`CompiledModule` with the library bytes and the CPU features it needs, and
        the IR as the rq-IR passes left it (every op's kernel annotated). For a machine
        other than this one it builds but raises ``TargetError`` when called.

    The pipeline (``pipelines.pipeline_for``: the rq-IR passes, then the TVM phases) runs
    under ``context`` (default: the active ``rq.PassContext``), so its instruments see every
    step.

    Raises:
        TargetError: the target has no pipeline. PassError: a pass or TVM phase failed (the
            message names it and the pipeline; TVM's error is the ``__cause__``).
        UnsupportedOpError: ops the emitter does not know, all listed at once.
    """
    ttarget = tvm_target(target)
    ctx = (context or PassContext.current()).for_stage(target=target)
    passes = pipeline_for(ttarget)
    n_rq = next(i for i, p in enumerate(passes) if isinstance(p, Phase))
    ir = PassManager(passes[:n_rq], verifier=verify).run(ir, ctx)  # decisions, as IR
    x: Any = PassManager(passes[n_rq:]).run(ir, ctx)  # TVM: emit ... relax.build
    t0 = time.perf_counter()
    suffix = library_suffix(target.to_dict())
    lib = export_bytes(x, suffix)
    _log.debug("export: %.3f s (%d bytes)", time.perf_counter() - t0, len(lib))
    libs = {}
    if generation_funcs(ir):  # kv-cache: one library per function, each emitted as main
        for name in GENERATION_FUNCS:
            fx_ = PassManager(passes[n_rq:]).run(func_as_main(ir, name), ctx)
            libs[name] = export_bytes(fx_, suffix)
    return compiled_module(
        ir, target, lib, features_for(ttarget), executable=x, tvm_target=ttarget,
        func_libraries=libs,
    )  # fmt: skip
