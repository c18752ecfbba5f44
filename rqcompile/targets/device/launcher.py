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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rqcompile.errors import ArtifactError
from rqcompile.targets.device.lower import Arg, FuncPlan

__all__ = ["Call", "Driver", "Executor", "ModelPlan", "Value"]

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


@dataclass(frozen=True)
class Value:
    """A tensor of the model: every input, weight, intermediate and output is one."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Call:
    """A call of one lowered function: its parameters as value ids or int scalars."""

    func: str
    args: tuple[tuple[str, int], ...]  # ("value", id) or (scalar dtype, value)


@dataclass(frozen=True)
class ModelPlan:
    """The whole model: values, which are inputs/weights/outputs, calls, and function plans."""

    values: tuple[Value, ...]
    inputs: tuple[int, ...]
    weights: tuple[tuple[str, int], ...]
    outputs: tuple[int, ...]
    calls: tuple[Call, ...]
    funcs: Mapping[str, FuncPlan]
    consts: tuple[tuple[int, tuple[float, ...]], ...] = ()  # small relax constants, inline

    def to_json(self) -> str:
        return json.dumps(
            {
                "values": [[list(v.shape), v.dtype] for v in self.values],
                "inputs": list(self.inputs),
                "weights": [list(w) for w in self.weights],
                "outputs": list(self.outputs),
                "calls": [[c.func, [list(a) for a in c.args]] for c in self.calls],
                "funcs": {k: f.to_json() for k, f in sorted(self.funcs.items())},
                "consts": [[i, list(d)] for i, d in self.consts],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelPlan:
        try:
            d = json.loads(text)
            return cls(
                tuple(Value(tuple(int(s) for s in v[0]), str(v[1])) for v in d["values"]),
                tuple(int(i) for i in d["inputs"]),
                tuple((str(n), int(i)) for n, i in d["weights"]),
                tuple(int(i) for i in d["outputs"]),
                tuple(
                    Call(str(f), tuple((str(a[0]), int(a[1])) for a in args))
                    for f, args in d["calls"]
                ),
                {k: FuncPlan.from_json(v) for k, v in d["funcs"].items()},
                tuple((int(i), tuple(data)) for i, data in d["consts"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(f"device plan is malformed ({type(e).__name__}: {e}).") from e


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


def _as(x: torch.Tensor, v: Value) -> torch.Tensor:
    """``x`` as a contiguous tensor of ``v``'s dtype (a view where possible, no copy)."""
    return x.detach().to(TORCH_DTYPES[v.dtype]).contiguous().reshape(v.shape)
