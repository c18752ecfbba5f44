"""Helpers shared by the QAT rewrite passes: node metadata, block resolution, quantizer insertion."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from rqcompile.config.spec import LayerSpec, PerChannel, PerGroup, PerTensor, QuantSpec
from rqcompile.errors import NumericsError
from rqcompile.quant.modules import RQQuantize

__all__ = [
    "RQNodeMeta",
    "add_quantizer",
    "conv_weight_block",
    "resolve_block",
    "shape_of",
]


@dataclass(frozen=True)
class RQNodeMeta:
    """What ``node.meta["rq"]`` holds on every node a QAT pass creates or annotates.

    Attributes:
        layer: layer key (module name, or ``owner:node`` for functional ops).
        kind: ``linear``, ``conv`` or ``matmul`` (activation × activation).
        role: ``weight``, ``activation`` (a quantizer node) or ``op`` (the matmul itself).
        spec: the resolved LayerSpec; ``convert`` reads it back (one spec from QAT to deploy).
        created_by: name of the pass that created the node.
        source: user source line, when known.
        macs: multiply-accumulates of the op for the example inputs (``op`` nodes).
        k: reduction size; block: kernel block (gcd of the operand blocks).
    """

    layer: str
    kind: str
    role: str
    spec: LayerSpec
    created_by: str
    source: str | None = None
    macs: int = 0
    k: int = 0
    block: int = 0


def shape_of(node: fx.Node) -> tuple[int, ...]:
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        raise NumericsError(f"node {node.name!r} has no recorded shape; was the graph captured?")
    return tuple(tm.shape)


def resolve_block(q: QuantSpec, k: int, *, layer: str, role: str) -> int:
    """Block size along K for one operand (docs/method.md#blocks rules; typed error otherwise)."""
    g = q.granularity
    if isinstance(g, (PerTensor, PerChannel)):
        return k
    assert isinstance(g, PerGroup)
    if k <= g.size:
        return k
    if k % g.size:
        divisors = [d for d in range(1, g.size + 1) if k % d == 0]
        raise NumericsError(
            f"layer {layer!r} ({role}): K={k} is not a multiple of the block size {g.size}.\n"
            f"Fix: use block_size={divisors[-1]} (a divisor of {k}), per-channel granularity, or "
            f"keep this layer in float with overrides={{{layer!r}: None}}."
        )
    return g.size


def conv_weight_block(q: QuantSpec, c_per_group: int, taps: int, *, layer: str) -> int:
    """Block for a conv weight flattened in (kh, kw, C/g) order: blocks stay inside C/g, or
    cover whole kernel taps when C/g is smaller than the block size."""
    g = q.granularity
    if isinstance(g, (PerTensor, PerChannel)):
        return c_per_group * taps
    assert isinstance(g, PerGroup)
    if c_per_group >= g.size:
        return resolve_block(q, c_per_group, layer=layer, role="weight")
    best = 1
    for f in range(1, taps + 1):
        if taps % f == 0 and c_per_group * f <= g.size:
            best = f
    return c_per_group * best


def kernel_block(a: int, b: int) -> int:
    """Block of the integer kernel: the finest common refinement of the two operand blocks."""
    return math.gcd(a, b)


def add_quantizer(
    gm: fx.GraphModule,
    owner: str,
    name: str,
    spec: LayerSpec,
    q: QuantSpec,
    *,
    role: str,
    layout: str,
    block: int,
    layer: str,
) -> str:
    """Register an :class:`RQQuantize` under module ``owner`` and return its qualified name."""
    parent = gm.get_submodule(owner) if owner else gm
    mod = RQQuantize(
        q,
        role=role,
        layout=layout,
        block=block,
        estimator=spec.estimator,
        ridge_lambda=spec.ridge_lambda,
        sparsity=spec.sparsity if role == "weight" else None,
        layer=layer,
        estimator_options=dict(spec.estimator_options),
    )
    base, i = name, 1
    while hasattr(parent, name):
        i += 1
        name = f"{base}{i}"
    parent.add_module(name, mod)
    return f"{owner}.{name}" if owner else name


def check_finite(t: torch.Tensor, *, layer: str, what: str, stage: str = "prepare()") -> None:
    """Raise a ``NumericsError`` naming ``layer`` if ``t`` holds NaN/Inf; ``stage`` is the
    call the user should make only after fixing the weights."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise NumericsError(
            f"layer {layer!r}: {what} has {bad} NaN/Inf values; quantization statistics would be "
            f"NaN. Fix the checkpoint (or the training run that produced it) before {stage}."
        )
