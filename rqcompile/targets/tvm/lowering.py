"""The rq-IR part of a CPU build: which IR passes run before the emitter, with which options.

``pipelines.cpu_phases`` starts with :func:`ir_passes` for the target; tests and tools that
call ``emit.emit_module(ir, options=...)`` directly get the same passes from
:func:`passes_for_options`. Both return ordinary registered passes, so the decisions they
record (``rq.kernel``, ``rq.fused``, ``rq.weight_layout``) show in the IR text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rqcompile.passes.ir import FuseAttention, FusePrologue, PackWeights, PadColumns, SelectKernels
from rqcompile.targets.tvm.kernels.table import KIND

__all__ = ["PROLOGUE_OPS", "ir_passes", "passes_for_options"]

#: The float ops fused into the activation quantize that follows them (``fuse-prologue``;
#: empty switches that fusion off). ``gelu`` is left out by default: both kernels are
#: compute-bound, and on the demo transformer (Zen 3, one thread) the fused GELU + quantize
#: ran no faster than the two apart (2.4-2.6 ms vs 2.4 per batch), the whole model 1.5-3%
#: slower than with the layer norms alone fused.
PROLOGUE_OPS: tuple[str, ...] = ("layer_norm",)


def ir_passes(
    features: Sequence[str], *, lanes: int | None, prologue_ops: Sequence[str] | None = None,
    force: Sequence[str] = (),
) -> list[Any]:  # fmt: skip
    """``pad-columns``, ``fuse-attention`` (where the target has ``lanes``-wide float
    vectors), ``select-kernels``, ``fuse-prologue`` (where ``prologue_ops``, default
    :data:`PROLOGUE_OPS`), ``pack-weights``."""
    if prologue_ops is None:
        prologue_ops = PROLOGUE_OPS
    # pad-columns first: the slice it adds after a padded q/k/v projection is then one more
    # input view of the attention group (read in place), not an op inside a marked group
    out: list[Any] = [PadColumns()]
    if lanes and lanes > 1:
        out.append(FuseAttention(lanes=lanes))
    out.append(SelectKernels(table=KIND, features=tuple(sorted(features)), force=tuple(force)))
    if prologue_ops:
        out.append(FusePrologue(ops=tuple(prologue_ops)))
    out.append(PackWeights(table=KIND))
    return out


def passes_for_options(options: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """The IR passes equivalent to the emitter's old ``options`` dict:
    ``{"int_matmul": {"isa": "avx2"}, "attention": {"lanes": 8},
    "prologue_quantize": {"ops": ("gelu",)}}`` (each kernel's ISA forced as given)."""
    force = [f"{kind}:{o['isa']}" for kind, o in options.items() if "isa" in o]
    lanes = options.get("attention", {}).get("lanes")
    ops = tuple(options.get("prologue_quantize", {}).get("ops", ()))
    return ir_passes((), lanes=int(lanes) if lanes else None, prologue_ops=ops, force=force)
