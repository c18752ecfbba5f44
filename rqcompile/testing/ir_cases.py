"""Many small IR test cases in one module, so one LLVM build checks them all.

Building is what dominates an IR-level kernel test; the attention and prologue-fusion tests
each emit every case into a single function (one branch per case), build it once per target
and split the outputs back per case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from rqcompile.ir import Builder, Module
from rqcompile.ir.core import Value

__all__ = ["Maker", "one_module"]

#: Emits one case into the builder: its input tensors (one function argument each, in
#: order) and its output values.
Maker = Callable[[Builder, torch.Generator], tuple[list[torch.Tensor], list[Value]]]


def one_module(
    makers: Mapping[str, Maker], seed: int = 0
) -> tuple[Module, list[torch.Tensor], dict[str, tuple[int, int]]]:
    """``(module, inputs, spans)``: every case in one function; ``spans[name]`` is the
    ``[lo, hi)`` range of that case's outputs in the function's results."""
    b, gen = Builder(), torch.Generator().manual_seed(seed)
    spans: dict[str, tuple[int, int]] = {}
    inputs: list[torch.Tensor] = []
    outputs: list[Value] = []
    for name, make in makers.items():
        ins, outs = make(b, gen)
        spans[name] = (len(outputs), len(outputs) + len(outs))
        inputs += ins
        outputs += outs
    b.ret(*outputs)
    return b.module(), inputs, spans
