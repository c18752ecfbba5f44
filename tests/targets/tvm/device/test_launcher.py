"""The shared launcher without any device: plan JSON round trip and argument marshalling.

A recording driver stands in for OpenCL/CUDA, so what the CUDA driver receives (kernel
names, argument order, scalar types, grid and block sizes) is checked on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from rqcompile.errors import ArtifactError
from rqcompile.targets.tvm.device.launcher import Executor
from rqcompile.targets.tvm.device.plan import Arg, Call, FuncPlan, Launch, ModelPlan, Value


class Recorder:
    """A driver that keeps buffers as torch tensors and records every launch."""

    def __init__(self) -> None:
        self.launches: list[tuple[str, list[Any], tuple[int, ...], tuple[int, ...]]] = []

    def alloc(self, dtype: str, numel: int) -> torch.Tensor:
        return torch.zeros(numel, dtype=getattr(torch, dtype))

    def upload(self, buf: torch.Tensor, x: torch.Tensor) -> None:
        buf[: x.numel()] = x.reshape(-1)

    def download(self, buf: torch.Tensor, dtype: str, shape: Sequence[int]) -> torch.Tensor:
        return buf[: torch.Size(shape).numel()].reshape(tuple(shape)).clone()

    def launch(self, kernel: str, args: Any, grid: Any, block: Any) -> None:
        self.launches.append((kernel, list(args), tuple(grid), tuple(block)))
        if kernel == "add_kernel":  # emulate: out = a + b + scalar
            (_, a), (_, b), (_, s), (_, out) = args
            out.copy_(a + b + s)

    def finish(self) -> None:
        pass


def _plan() -> ModelPlan:
    add = FuncPlan(
        ("buffer", "buffer", "int64", "buffer"),
        (("float32", 4),),
        (
            Launch(
                "add_kernel",
                (Arg("param", 0), Arg("param", 1), Arg("param", 2), Arg("temp", 0)),
                (2, 1, 1),
                (2, 1, 1),
            ),
            Launch(
                "copy_kernel",
                (Arg("temp", 0), Arg("param", 3), Arg("imm", dtype="int32", value=4)),
                (1, 1, 1),
                (4, 1, 1),
            ),
        ),
    )
    return ModelPlan(
        values=(Value((4,), "float32"), Value((4,), "float32"), Value((4,), "float32")),
        inputs=(0,),
        weights=(("w", 1),),
        outputs=(2,),
        calls=(Call("add", (("value", 0), ("value", 1), ("int64", 3), ("value", 2))),),
        funcs={"add": add},
    )


def test_plan_json_round_trip() -> None:
    plan = _plan()
    assert ModelPlan.from_json(plan.to_json()) == plan


def test_malformed_plan_is_an_artifact_error() -> None:
    with pytest.raises(ArtifactError, match="malformed"):
        ModelPlan.from_json('{"values": []}')


def test_plan_with_a_dangling_reference_is_rejected() -> None:
    text = _plan().to_json().replace('"outputs": [2]', '"outputs": [7]')
    with pytest.raises(ArtifactError, match="value 7"):
        ModelPlan.from_json(text)


def test_executor_marshals_params_temps_scalars_and_sizes() -> None:
    d = Recorder()
    ex = Executor(_plan(), d, {"w": torch.full((4,), 10.0)})
    (y,) = ex(torch.arange(4.0))
    (k1, a1, g1, b1), (k2, a2, g2, b2) = d.launches
    assert (k1, g1, b1) == ("add_kernel", (2, 1, 1), (2, 1, 1))
    assert [kind for kind, _ in a1] == ["buffer", "buffer", "int64", "buffer"]
    assert a1[2] == ("int64", 3)
    assert a1[3][1] is a2[0][1]  # the temporary is shared between the two launches
    assert (k2, a2[2], b2) == ("copy_kernel", ("int32", 4), (4, 1, 1))
    assert torch.equal(a1[3][1], torch.arange(4.0) + 13)  # input + weight + scalar
    assert y.shape == (4,)
