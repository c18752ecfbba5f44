"""Split an rq function into float segments (FX-imported) and integer kernels (our linalg).

Every op that is not an integer kernel (quantize, reshapes, im2col, norms, softmax, ...) is
exported by torch-mlir's FX importer from the *reference target's own torch kernel*
(:data:`rqcompile.targets.reference.KERNELS`), so the float semantics in MLIR are the
oracle's by construction. Importing op by op would cost one ``torch.export`` per op (a
grouped conv has hundreds), so ops are grouped into as few segments as the data flow allows:

- ``level(value)``: 0 for arguments and constants; a float op's results take the max level
  of its operands; an integer kernel's results take that max **plus one**. Sign words
  (``rq.quantize(pack="bits32")``) are packed by integer MLIR after their segment, so a
  float op reading them (im2col of an XNOR conv) counts their level plus one.
- Segment ``L`` holds the float ops of level ``L`` (in program order). The schedule is
  segment 0, kernels of level 1, segment 1, kernels of level 2, ... Every operand is
  ready when used: a float op of level L only reads levels ≤ L, and a kernel of level L+1
  only reads levels ≤ L.

So the number of segments is the integer-kernel depth of the network plus one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rqcompile.errors import UnsupportedOpError
from rqcompile.ir.core import Func, Op, Value
from rqcompile.ir.types import TensorType

__all__ = ["INT_OPS", "Segment", "schedule", "segment_module", "segment_type"]

#: Ops written by :mod:`rqcompile.targets.mlir.int_kernels` instead of the FX importer.
INT_OPS = frozenset({"rq.int_matmul", "rq.xnor_popcount_matmul", "rq.sparse24_matmul", "rq.qbmm"})

# torch dtype of a segment boundary value, by rq dtype (signless in MLIR; see text.py).
_TORCH = {
    "f32": torch.float32,
    "i8": torch.int8,
    "ui8": torch.uint8,
    "i32": torch.int32,
    "ui32": torch.int32,
    "i64": torch.int64,
    "i1": torch.bool,
}


@dataclass(frozen=True)
class Segment:
    """Float ops run as one FX-imported function: ``outputs = f(inputs)``."""

    ops: tuple[Op, ...]
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]


def packs_signs(op: Op) -> bool:
    """``rq.quantize`` with ``pack="bits32"``: the segment returns ±1 ``i8`` codes and the
    packing into sign words is written as integer MLIR after the call."""
    return op.name == "rq.quantize" and op.attr("pack") == "bits32"


def segment_type(v: Value, producer: Op | None) -> TensorType:
    """The type of ``v`` at a segment boundary (±1 codes are unpacked there)."""
    if producer is not None and packs_signs(producer) and v is producer.results[0]:
        src = producer.operands[0].type
        return TensorType(src.shape, "i8")
    return v.type


def schedule(func: Func) -> list[Segment | Op]:
    """Segments and integer ops in an order that respects every data dependency."""
    level: dict[int, int] = {v.id: 0 for v in func.args}
    body = [op for op in func.ops if op.name != "rq.const"]
    for op in func.ops:
        if op.name == "rq.const":
            level[op.result.id] = 0
    packed = {op.results[0].id for op in body if packs_signs(op)}
    for op in body:
        # a float op that reads sign words (an A1W1 conv's im2col) reads them after the
        # integer packing that follows the quantize's segment: one level later
        lv = max((level[v.id] + (v.id in packed and op.name not in INT_OPS)
                  for v in op.operands), default=0) + (op.name in INT_OPS)  # fmt: skip
        for r in op.results:
            level[r.id] = lv
    used_later: dict[int, int] = {}
    for i, op in enumerate(body):
        for v in op.operands:
            used_later[v.id] = i
    returned = {v.id for v in func.outputs}
    top = max(level.values(), default=0)
    steps: list[Segment | Op] = []
    for lv in range(top + 1):
        ops = [op for op in body if op.name not in INT_OPS and level[op.results[0].id] == lv]
        if ops:
            steps.append(_segment(ops, body, returned))
        steps += [op for op in body if op.name in INT_OPS and level[op.results[0].id] == lv + 1]
    return steps


def _segment(ops: list[Op], body: list[Op], returned: set[int]) -> Segment:
    inside = {r.id for op in ops for r in op.results}
    members = {id(op) for op in ops}
    inputs: dict[int, Value] = {}
    for op in ops:
        for v in op.operands:
            if v.id not in inside:
                inputs.setdefault(v.id, v)
    used_outside = {v.id for op in body if id(op) not in members for v in op.operands} | returned
    outputs = [r for op in ops for r in op.results if r.id in used_outside]
    return Segment(tuple(ops), tuple(inputs.values()), tuple(outputs))


class SegmentModule(torch.nn.Module):
    """``forward(*inputs)`` runs the segment's ops with the reference target's torch kernels."""

    def __init__(self, seg: Segment) -> None:
        super().__init__()
        self.seg = seg

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from rqcompile.targets.reference import KERNELS

        env = {v.id: x for v, x in zip(self.seg.inputs, xs, strict=True)}
        for op in self.seg.ops:
            attrs: Any = op.attrs_dict
            if packs_signs(op):
                attrs = {**attrs, "pack": "none"}
            out = KERNELS[op.name](tuple(env[v.id] for v in op.operands), attrs)
            outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            env.update(zip((r.id for r in op.results), outs, strict=True))
        return tuple(env[v.id] for v in self.seg.outputs)


def example_tensor(t: TensorType) -> torch.Tensor:
    """A zero tensor of ``t``'s shape and boundary dtype (``torch.export`` traces shapes only)."""
    if t.dtype not in _TORCH:
        raise UnsupportedOpError(f"MLIR export: no torch dtype for a segment value of {t}.")
    return torch.zeros(tuple(int(d) for d in t.shape), dtype=_TORCH[t.dtype])  # type: ignore[arg-type]


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else ""


def segment_module(seg: Segment, in_types: Sequence[TensorType], func_name: str) -> str:
    """Import ``seg`` with torch-mlir's FX importer, lowered to linalg-on-tensors; MLIR text.

    Raises:
        UnsupportedOpError: an op of the segment has no reference kernel, or torch-mlir could
            not export or lower it (the message lists the segment's ops).
    """
    from rqcompile.targets.reference import KERNELS

    missing = sorted({op.name for op in seg.ops if op.name not in KERNELS})
    if missing:
        raise UnsupportedOpError(f"MLIR export: no reference kernel for {', '.join(missing)}.")
    from torch_mlir import fx

    examples = [example_tensor(t) for t in in_types]
    try:
        with torch.no_grad():  # kernels under no_grad then trace without grad-mode wrappers
            mod = fx.export_and_import(
                SegmentModule(seg).eval(),
                *examples,
                output_type="linalg-on-tensors",
                func_name=func_name,
                decomposition_table={},
            )
    except Exception as e:
        ops = ", ".join(sorted({op.name for op in seg.ops}))
        layers = ", ".join(sorted({op.loc.layer for op in seg.ops if op.loc is not None}))
        raise UnsupportedOpError(
            f"MLIR export: torch-mlir could not import the float ops {ops} "
            f"(layers: {layers or 'unnamed'}): {type(e).__name__}: {_first_line(e)}. Keep "
            "those layers float or file an issue with this message."
        ) from e
    return str(mod)
