"""One PrimFunc as a device kernel callable on torch tensors (tests, benchmarks, debugging).

``device_kernel(func, specs, n_inputs, "opencl")`` schedules, lowers and generates code for
one PrimFunc (e.g. a ``kernels/integer.py`` TE compute) exactly as a whole-model build does, and
returns a function ``(*inputs) -> outputs`` running it through the shared launcher. The
kernel tests use it to check each integer core bit-exact against the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rqcompile.targets.tvm.device.plan import Call, ModelPlan, Value
from rqcompile.targets.target import Target, TargetLike

__all__ = ["device_kernel"]


def device_kernel(
    func: Any,
    specs: Sequence[tuple[Sequence[int], str]],
    n_inputs: int,
    target: TargetLike = "opencl",
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Build ``func`` (all parameters buffers, inputs first) for a device target.

    Args:
        func: a PrimFunc whose parameters are ``specs`` (shape, TVM dtype), in order.
        n_inputs: how many leading parameters are inputs; the rest are outputs.
        target: ``"opencl"`` runs here; ``"cuda"`` needs a GPU (and nvcc to build).

    Returns:
        ``run(*inputs) -> tuple of outputs`` (torch tensors on the CPU for OpenCL).
    """
    from rqcompile.targets.tvm.device.build import DeviceBackend, _archs, _runner, _tvm_target
    from rqcompile.targets.tvm.device.codegen import kernel_source, nvcc_fatbin
    from rqcompile.targets.tvm.device.gpu_schedules import schedule_device_func
    from rqcompile.targets.tvm.device.lower import lower_funcs

    tgt = Target.parse(target)
    ttarget = _tvm_target(tgt)
    device_mod, plans = lower_funcs({"kernel": schedule_device_func(func)}, ttarget)
    source = kernel_source(device_mod, ttarget)
    binary = nvcc_fatbin(source, _archs(tgt)) if tgt.kind == "cuda" else None
    values = tuple(Value(tuple(int(d) for d in s), str(dt)) for s, dt in specs)
    ids = tuple(range(len(values)))
    plan = ModelPlan(
        values,
        ids[:n_inputs],
        (),
        ids[n_inputs:],
        (Call("kernel", tuple(("value", i) for i in ids)),),
        plans,
    )
    return _runner({}, tgt, DeviceBackend(source, plan, binary))
