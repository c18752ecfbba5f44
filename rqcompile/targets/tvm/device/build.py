"""``build_device``: rq IR → device kernels (CUDA / OpenCL / Metal) + a launch plan.

Phases (each failure is a ``TargetError`` naming the phase):

============ ==============================================================================
emit         ``tvm/emit.emit_module``, the CPU path's emitter (same kernels, same TOPI ops)
legalize     ``tvm/pipelines.legalize_passes`` (same passes as ``llvm``)
graph        ``graph.read_main``: the relax ``main`` → values and calls
schedule     ``gpu_schedules``: every block bound to ``blockIdx``/``threadIdx``
lower        ``lower.lower_funcs``: TVM's TIR pipeline up to SplitHostDevice → kernels+plans
codegen      ``codegen.kernel_source`` (and ``nvcc_fatbin`` for CUDA)
============ ==============================================================================

The result runs through ``launcher.Executor`` with the OpenCL or CUDA driver; Metal source
is generated (and saved) but not run. Artifacts hold ``device_plan.json`` plus the kernel
source (``kernels.cl`` / ``kernels.cu`` / ``kernels.metal``) and, for CUDA, the
``kernels.fatbin`` nvcc built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rqcompile.errors import RQError, TargetError
from rqcompile.ir.core import Module
from rqcompile.targets.compiled import CompiledModule
from rqcompile.targets.tvm.device.launcher import Executor
from rqcompile.targets.tvm.device.plan import ModelPlan
from rqcompile.targets.target import Target as RQTarget

__all__ = ["DEVICE_KINDS", "DeviceBackend", "build_device", "load_device"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Kind:
    threads: int
    source: str  # artifact member holding the source


#: Device target kinds and their defaults (threads per block, source member name).
DEVICE_KINDS: Mapping[str, _Kind] = {
    "opencl": _Kind(64, "kernels.cl"),
    "cuda": _Kind(128, "kernels.cu"),
    "metal": _Kind(64, "kernels.metal"),
}


@dataclass(frozen=True)
class DeviceBackend:
    """``CompiledModule.backend`` of a device build: the kernel source and the plan."""

    source: str
    plan: ModelPlan
    binary: bytes | None = None  # the CUDA fatbin


def _tvm_target(target: RQTarget) -> Any:
    from rqcompile.targets.tvm.adapter import make_target

    spec = {k: v for k, v in target.to_dict().items() if k not in ("archs", "threads")}
    if spec["kind"] == "cuda":
        spec.setdefault("arch", _archs(target)[0])
    return make_target(spec)


def _archs(target: RQTarget) -> tuple[str, ...]:
    """The nvcc arch list: ``archs``, else TVM's single ``arch``, else sm_80 + sm_90."""
    from rqcompile.targets.tvm.device.codegen import DEFAULT_CUDA_ARCHS

    spec = target.to_dict()
    archs = spec.get("archs", (spec["arch"],) if "arch" in spec else DEFAULT_CUDA_ARCHS)
    return (archs,) if isinstance(archs, str) else tuple(archs)


def _phase(name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        out = fn()
    except RQError:
        raise
    except Exception as e:  # TVM's own error types; keep them as the cause
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise TargetError(f"device build phase {name!r} failed: {type(e).__name__}: {last}") from e
    _log.debug("phase %s: %.3f s", name, time.perf_counter() - t0)
    return out


def build_device(ir: Module, target: RQTarget) -> CompiledModule:
    """Build ``ir`` for a device target kind (``opencl``, ``cuda``, ``metal``).

    Raises:
        TargetError: a phase failed, nvcc is missing (CUDA), or the attributes are invalid.
    """
    from rqcompile.targets.tvm.device.codegen import kernel_source, nvcc_fatbin
    from rqcompile.targets.tvm.device.gpu_schedules import schedule_device_func
    from rqcompile.targets.tvm.device.graph import read_main
    from rqcompile.targets.tvm.device.lower import lower_funcs
    from rqcompile.targets.tvm.adapter import tvm
    from rqcompile.targets.tvm.emit.module import const_params, emit_module
    from rqcompile.targets.tvm.pipelines import legalize_passes

    kind = DEVICE_KINDS[target.kind]
    ttarget = _tvm_target(target)
    threads = int(target.to_dict().get("threads", kind.threads))
    names = list(const_params(ir))
    mod = _phase("emit", lambda: emit_module(ir))
    mod = _phase("legalize", lambda: tvm.transform.Sequential(legalize_passes())(mod))
    g = _phase("graph", lambda: read_main(mod, len(names), names))
    funcs = _phase(
        "schedule", lambda: {n: schedule_device_func(f, threads) for n, f in g.funcs.items()}
    )
    device_mod, plans = _phase("lower", lambda: lower_funcs(funcs, ttarget))
    source = _phase("codegen", lambda: kernel_source(device_mod, ttarget))
    binary = nvcc_fatbin(source, _archs(target)) if target.kind == "cuda" else None
    plan = ModelPlan(
        tuple(g.values),
        tuple(g.inputs),
        tuple(g.weights),
        tuple(g.outputs),
        tuple(g.calls),
        plans,
        tuple((i, tuple(d)) for i, d in g.consts),
    )
    return _compiled(ir, target, DeviceBackend(source, plan, binary))


def _members(target: RQTarget, backend: DeviceBackend) -> dict[str, bytes]:
    out = {
        "device_plan.json": backend.plan.to_json().encode(),
        DEVICE_KINDS[target.kind].source: backend.source.encode(),
    }
    if backend.binary is not None:
        out["kernels.fatbin"] = backend.binary
    return out


class _Unrunnable:
    def __init__(self, message: str) -> None:
        self._message = message

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise TargetError(self._message)


def _runner(
    weights: Mapping[str, torch.Tensor], target: RQTarget, backend: DeviceBackend
) -> Any:
    """The callable that runs ``backend`` here, or one that explains why it can't."""
    if target.kind == "opencl":
        from rqcompile.targets.tvm.device.opencl import OpenCLDriver, opencl_available

        why = opencl_available()
        if why is not None:
            return _Unrunnable(f"this opencl build cannot run here: {why}")
        return Executor(backend.plan, OpenCLDriver(backend.source), weights)
    if target.kind == "cuda":
        from rqcompile.targets.tvm.device.cuda import CudaDriver, cuda_available

        why = cuda_available()
        if why is not None:
            return _Unrunnable(
                f"this cuda build cannot run here: {why}. Save it (exe.save(path)) and load it "
                "on a machine with an NVIDIA GPU, or build with target='opencl' / 'llvm'."
            )
        return Executor(backend.plan, CudaDriver(backend.binary or b""), weights)
    return _Unrunnable(
        f"target {target.kind!r} generates kernel source only (exe.backend.source); rqcompile "
        "has no runtime for it. Use target='opencl' or 'llvm' to run the model."
    )


def _compiled(ir: Module, target: RQTarget, backend: DeviceBackend) -> CompiledModule:
    return CompiledModule(
        ir,
        target,
        _runner(ir.constants, target, backend),
        members=_members(target, backend),
        backend=backend,
    )


def load_device(ir: Module, target: RQTarget, members: Mapping[str, bytes]) -> CompiledModule:
    """Rebuild the runner of a saved device artifact from its plan and kernels (no TVM)."""
    from rqcompile.errors import ArtifactError

    kind = DEVICE_KINDS[target.kind]
    missing = [m for m in ("device_plan.json", kind.source) if m not in members]
    if target.kind == "cuda" and "kernels.fatbin" not in members:
        missing.append("kernels.fatbin")
    if missing:
        raise ArtifactError(
            f"device artifact for {target.kind} lacks {missing}; re-save it from the model."
        )
    plan = ModelPlan.from_json(members["device_plan.json"].decode())
    backend = DeviceBackend(members[kind.source].decode(), plan, members.get("kernels.fatbin"))
    return _compiled(ir, target, backend)
