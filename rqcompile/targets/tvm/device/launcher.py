"""One device-kernel launcher for every device target: plans, buffers, argument marshalling.

Where it sits: ``device/build.py`` produces a :class:`ModelPlan` (JSON) and kernel code;
:class:`Executor` replays the plan through a :class:`Driver`. Only the driver differs
between OpenCL (``opencl.py``, pyopencl) and CUDA (``cuda.py``, cuda-python), so everything
here (grid/block sizes, argument order, temporaries, input/weight/output buffers, the
artifact's ``device_plan.json``) is exercised in CI by the OpenCL target.

Memory: every value of the model gets its own device buffer, allocated once per loaded
model and reused across calls (no liveness planning; fine for the models these targets
are tested on, wasteful for large ones). Weights are uploaded once. Inputs are copied in
and outputs copied out (CUDA: device-to-device copies on torch CUDA tensors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from rqcompile.targets.tvm.device.plan import Arg, Call, ModelPlan

__all__ = ["TORCH_DTYPES", "Driver", "Executor"]

#: TVM dtype → torch dtype, for every dtype a plan may hold.
TORCH_DTYPES: Mapping[str, torch.dtype] = {
    "bool": torch.bool,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int32": torch.int32,
    "uint32": torch.uint32,
    "int64": torch.int64,
    "float32": torch.float32,
    "float64": torch.float64,
}


class Driver(Protocol):
    """What a device runtime must provide. Buffers are opaque handles of the driver."""

    def alloc(self, dtype: str, numel: int) -> Any: ...

    def upload(self, buf: Any, x: torch.Tensor) -> None: ...

    def download(self, buf: Any, dtype: str, shape: Sequence[int]) -> torch.Tensor: ...

    def launch(
        self,
        kernel: str,
        args: Sequence[tuple[str, Any]],
        grid: Sequence[int],
        block: Sequence[int],
    ) -> None:
        """``args``: ``("buffer", handle)`` or ``(dtype, int value)`` in kernel order."""
        ...

    def finish(self) -> None: ...


class Executor:
    """Runs a :class:`ModelPlan` on a driver: ``Executor(plan, driver, weights)(*inputs)``."""

    def __init__(self, plan: ModelPlan, driver: Driver, weights: Mapping[str, torch.Tensor]):
        self.plan = plan
        self.driver = driver
        self._bufs = [driver.alloc(v.dtype, max(v.numel, 1)) for v in plan.values]
        for name, vid in plan.weights:
            driver.upload(self._bufs[vid], _as(weights[name], plan.values[vid]))
        for vid, data in plan.consts:
            v = plan.values[vid]
            driver.upload(self._bufs[vid], _as(torch.tensor(data), v))
        self._temps = {
            name: [driver.alloc(dt, max(n, 1)) for dt, n in f.temps]
            for name, f in plan.funcs.items()
        }

    def _marshal(self, call: Call, arg: Arg) -> tuple[str, Any]:
        if arg.kind == "imm":
            return (arg.dtype, arg.value)
        if arg.kind == "temp":
            return ("buffer", self._temps[call.func][arg.index])
        kind, v = call.args[arg.index]
        return ("buffer", self._bufs[v]) if kind == "value" else (kind, v)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.driver
        for x, vid in zip(inputs, self.plan.inputs, strict=True):
            d.upload(self._bufs[vid], _as(x, self.plan.values[vid]))
        for call in self.plan.calls:
            for ln in self.plan.funcs[call.func].launches:
                d.launch(ln.kernel, [self._marshal(call, a) for a in ln.args], ln.grid, ln.block)
        d.finish()
        return tuple(
            d.download(self._bufs[v], self.plan.values[v].dtype, self.plan.values[v].shape)
            for v in self.plan.outputs
        )


def _as(x: torch.Tensor, v: Any) -> torch.Tensor:
    """``x`` as a contiguous tensor of ``v``'s dtype (a view where possible, no copy)."""
    return x.detach().to(TORCH_DTYPES[v.dtype]).contiguous().reshape(v.shape)
