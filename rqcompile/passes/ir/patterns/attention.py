"""Find scaled dot-product attention in an rq function: the ops one fused kernel replaces.

Where it sits: the ``fuse-attention`` pass (``passes/ir/fuse_attention.py``) asks
:func:`find_attention` for the groups of a function and marks the ops of each group that
:func:`attention_fits` a target's vector width; the TVM emitter then emits
``kernels.attention.te_attention`` in place of the group's last op (CPU targets with vector
code only).

A group is an attention *core* plus the layout ops around it:

* **core**: ``rq.sdpa``, or the explicit form the demo transformer traces to::

      s = matmul(q, kᵀ)  [· mul_scalar(c > 0)]  [masked_fill(M, -inf) | causal_mask(-inf)]
      o = matmul(softmax(s, -1), v)

  where the mask ``M`` is a constant equal to ``j > i + offset`` (``offset >= 0``: no row is
  fully masked), and every intermediate has no other use.
* **input views**: ``rq.reshape`` / ``rq.permute`` / ``rq.slice`` / ``rq.add`` ops whose
  results feed only the group (the q/k/v split of a fused ``c_attn`` projection, its bias,
  the head transposes). The kernel reads their *inputs* through composed index maps, so the
  sliced and transposed copies are never written.
* **output steps**: the ``rq.permute`` / ``rq.reshape`` chain after the core (heads back to
  ``[B, T, C]``), written by the kernel directly in the final layout.

Views are nested tuples (hashable, so equal groups share one PrimFunc):
``("in", i, shape)`` kernel input ``i``; ``("reshape", shape, v)``; ``("permute", dims, v)``;
``("slice", axis, start, step, size, v)``; ``("add", shape, a, b)`` (numpy broadcasting).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rqcompile.ir.core import Func, Op, Value
from rqcompile.ir.types import TensorType
from rqcompile.ir.uses import Uses

__all__ = ["AttentionGroup", "attention_dims", "attention_fits", "find_attention", "view_shape"]

View = tuple[Any, ...]
_LAYOUT = ("rq.reshape", "rq.permute", "rq.slice", "rq.add")
_OUT_STEPS = ("rq.permute", "rq.reshape")
_MAX_VIEW_OPS = 16  # per group: a bound on how far back the views reach


@dataclass(frozen=True)
class AttentionGroup:
    """One fused attention: which ops it replaces and what the kernel computes.

    ``q``/``k``/``v`` are views of shape ``[*batch, T, E]``, ``[*batch, S, E]``,
    ``[*batch, S, Ev]``; ``out_steps`` map the core output ``[*batch, T, Ev]`` to ``result``.
    ``offset``: causal, key ``j`` is masked for query ``i`` when ``j > i + offset``; ``None``
    for no mask.
    """

    ops: frozenset[int]
    anchor: int
    inputs: tuple[Value, ...]
    q: View
    k: View
    v: View
    out_steps: tuple[tuple[Any, ...], ...]
    scale: float
    offset: int | None
    result: Value

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything the kernel depends on (with the input types)."""
        types = tuple(v.type for v in self.inputs)
        return (self.q, self.k, self.v, self.out_steps, self.scale.hex(), self.offset, types)


def _dims(t: TensorType) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)  # type: ignore[arg-type]


def view_shape(v: View) -> tuple[int, ...]:
    """Shape of a view (see the module docstring for the node kinds)."""
    kind = v[0]
    if kind in ("in", "reshape", "add"):
        return tuple(v[2] if kind == "in" else v[1])
    if kind == "permute":
        inner = view_shape(v[2])
        return tuple(inner[d] for d in v[1])
    axis, size, inner = v[1], v[4], view_shape(v[5])
    return (*inner[:axis], size, *inner[axis + 1 :])


def _causal_offset(mask: torch.Tensor, t: int, s: int) -> int | None:
    """``offset`` if ``mask`` (True = masked) is exactly ``j > i + offset`` with ``offset >= 0``."""
    if mask.dtype != torch.bool or mask.numel() != t * s or mask.shape[-2:] != (t, s):
        return None
    m = mask.reshape(t, s)
    offset = int((~m[0]).sum()) - 1
    if offset < 0 or offset >= s - 1:  # row 0 fully masked, or nothing masked at all
        return None
    i = torch.arange(t).unsqueeze(1)
    j = torch.arange(s).unsqueeze(0)
    return offset if torch.equal(m, j > i + offset) else None


def _additive_causal(
    g: Uses, op: Op, constants: Mapping[str, torch.Tensor], t: int, s: int
) -> tuple[int, Value] | None:
    """``(offset, scores)`` where ``op`` adds a constant mask that is 0 where kept and
    ``-inf`` where ``j > i + offset`` (the same ``[T, S]`` pattern in every leading slice:
    ``torch.full_like(att, -inf).triu(1)`` folded at convert), else ``None``."""
    for mask_v, chain in (op.operands, op.operands[::-1]):
        const = g.op_of(mask_v)
        if const is None or const.name != "rq.const" or g.op_of(chain) is None:
            continue
        m = constants[str(const.attr("name"))]
        if not m.is_floating_point() or m.shape[-2:] != (t, s):
            return None
        if not bool((torch.isneginf(m) | (m == 0)).all()):
            return None
        slices = m.reshape(-1, t, s)
        if not bool((slices == slices[:1]).all()):
            return None
        offset = _causal_offset(torch.isneginf(slices[0]), t, s)
        return None if offset is None else (offset, chain)
    return None


@dataclass
class _Core:
    ops: list[int]
    q: Value
    k_view_of: Value  # k as stored: [.., S, E] (rq.sdpa) or kᵀ [.., E, S] (explicit form)
    k_transposed: bool
    v: Value
    out: Value
    scale: float
    offset: int | None


def _explicit_core(
    g: Uses, idx: int, constants: Mapping[str, torch.Tensor]
) -> _Core | None:
    """The explicit form ending in the ``rq.softmax`` at ``idx`` (module docstring)."""
    f = g.f
    sm = f.ops[idx]
    rank = sm.result.type.rank
    if int(sm.attr("axis")) % rank != rank - 1 or rank < 2:  # type: ignore[arg-type]
        return None
    pv_i = g.only_use(sm.result)
    if pv_i is None or f.ops[pv_i].name != "rq.matmul" or f.ops[pv_i].operands[0] != sm.result:
        return None
    ops, scale, offset = [idx, pv_i], 1.0, None
    cur = sm.operands[0]
    t, s = _dims(cur.type)[-2:]
    while True:
        pi = g.producer.get(cur.id)
        if pi is None or g.only_use(cur) is None:
            return None
        op = f.ops[pi]
        if op.name == "rq.matmul":
            ops.append(pi)
            break
        if op.name == "rq.mul_scalar" and float(op.attr("value")) > 0:  # type: ignore[arg-type]
            scale *= float(op.attr("value"))  # type: ignore[arg-type]
        elif op.name == "rq.masked_fill" and offset is None:
            if float(op.attr("value")) != -math.inf:  # type: ignore[arg-type]
                return None
            const = g.op_of(op.operands[1])
            if const is None or const.name != "rq.const":
                return None
            offset = _causal_offset(constants[str(const.attr("name"))], t, s)
            if offset is None:
                return None
        elif op.name == "rq.add" and offset is None:  # s + M, M = 0 / -inf (full_like...triu)
            found = _additive_causal(g, op, constants, t, s)
            if found is None:
                return None
            offset, chain = found
            ops.append(pi)
            cur = chain
            continue
        elif op.name == "rq.causal_mask" and offset is None:
            if float(op.attr("fill")) != -math.inf or s < t:  # type: ignore[arg-type]
                return None
            offset = s - t
        else:
            return None
        ops.append(pi)
        cur = op.operands[0]
    qk = f.ops[ops[-1]]
    q, kt, v = qk.operands[0], qk.operands[1], f.ops[pv_i].operands[1]
    out = f.ops[pv_i].result
    if not _shapes_ok(q.type, kt.type, v.type, out.type, k_transposed=True):
        return None
    return _Core(ops, q, kt, True, v, out, scale, offset)


def _sdpa_core(g: Uses, idx: int) -> _Core | None:
    op = g.f.ops[idx]
    q, k, v = op.operands
    if not _shapes_ok(q.type, k.type, v.type, op.result.type, k_transposed=False):
        return None
    offset = 0 if op.attr("causal") else None
    return _Core([idx], q, k, False, v, op.result, float(op.attr("scale")), offset)  # type: ignore[arg-type]


def _shapes_ok(
    q: TensorType, k: TensorType, v: TensorType, out: TensorType, *, k_transposed: bool
) -> bool:
    """Static f32 operands of one rank with equal batch dims (no broadcasting)."""
    ts = (q, k, v, out)
    if any(t.dtype != "f32" or t.rank != q.rank or None in t.shape for t in ts) or q.rank < 2:
        return False
    qd, kd, vd, od = (_dims(t) for t in ts)
    if len({qd[:-2], kd[:-2], vd[:-2], od[:-2]}) != 1:
        return False
    s, e = (kd[-1], kd[-2]) if k_transposed else (kd[-2], kd[-1])
    return qd[-1] == e and vd[-2] == s and od[-2:] == (qd[-2], vd[-1])


def _absorb_inputs(g: Uses, group: set[int]) -> None:
    """Add to ``group`` the layout/add ops whose results feed only the group (fixpoint)."""
    added = 0
    changed = True
    while changed and added < _MAX_VIEW_OPS:
        changed = False
        frontier = {v.id: v for i in sorted(group) for v in g.f.ops[i].operands}
        for v in frontier.values():
            pi = g.producer.get(v.id)
            if pi is None or pi in group or g.f.ops[pi].name not in _LAYOUT:
                continue
            uses = g.uses.get(v.id, [])
            if uses and all(u in group for u in uses) and _static(g.f.ops[pi]):
                group.add(pi)
                added += 1
                changed = True
                break


def _static(op: Op) -> bool:
    return all(None not in v.type.shape for v in (*op.operands, *op.results))


class _Views:
    """Builds the view trees of values, numbering the kernel inputs as they are met."""

    def __init__(self, g: Uses, group: set[int]) -> None:
        self.g, self.group = g, group
        self.inputs: list[Value] = []

    def of(self, v: Value) -> View:
        pi = self.g.producer.get(v.id)
        if pi is None or pi not in self.group or self.g.f.ops[pi].name not in _LAYOUT:
            if v not in self.inputs:
                self.inputs.append(v)
            return ("in", self.inputs.index(v), _dims(v.type))
        op = self.g.f.ops[pi]
        shape = _dims(op.result.type)
        if op.name == "rq.reshape":
            return ("reshape", shape, self.of(op.operands[0]))
        if op.name == "rq.permute":
            dims = tuple(int(d) % len(shape) for d in op.attr("dims"))  # type: ignore[union-attr]
            return ("permute", dims, self.of(op.operands[0]))
        if op.name == "rq.add":
            return ("add", shape, self.of(op.operands[0]), self.of(op.operands[1]))
        x = op.operands[0]
        axis = int(op.attr("axis")) % x.type.rank  # type: ignore[arg-type]
        dim = _dims(x.type)[axis]
        start, _, step = slice(op.attr("start"), op.attr("stop"), op.attr("step")).indices(dim)
        return ("slice", axis, start, step, shape[axis], self.of(x))


def _out_steps(g: Uses, out: Value, group: set[int]) -> tuple[tuple[tuple[Any, ...], ...], Value]:
    steps: list[tuple[Any, ...]] = []
    while True:
        ui = g.only_use(out)
        if ui is None or g.f.ops[ui].name not in _OUT_STEPS or not _static(g.f.ops[ui]):
            return tuple(steps), out
        op = g.f.ops[ui]
        if op.name == "rq.permute":
            steps.append(("permute", tuple(int(d) % out.type.rank for d in op.attr("dims"))))  # type: ignore[union-attr]
        else:
            steps.append(("reshape", _dims(op.result.type)))
        group.add(ui)
        out = op.result


def find_attention(func: Func, constants: Mapping[str, torch.Tensor]) -> list[AttentionGroup]:
    """Every attention group of ``func`` (module docstring), in op order; groups never share
    an op."""
    g = Uses(func)
    groups: list[AttentionGroup] = []
    taken: set[int] = set()
    for idx, op in enumerate(func.ops):
        if op.name == "rq.softmax":
            core = _explicit_core(g, idx, constants)
        elif op.name == "rq.sdpa":
            core = _sdpa_core(g, idx)
        else:
            continue
        if core is None or taken & set(core.ops):
            continue
        group = set(core.ops)
        _absorb_inputs(g, group)
        steps, result = _out_steps(g, core.out, group)
        if taken & group:
            continue
        views = _Views(g, group)
        q, kv, v = views.of(core.q), views.of(core.k_view_of), views.of(core.v)
        if core.k_transposed:  # k [.., S, E] = (kᵀ)ᵀ
            rank = len(view_shape(kv))
            kv = ("permute", (*range(rank - 2), rank - 1, rank - 2), kv)
        taken |= group
        groups.append(
            AttentionGroup(
                ops=frozenset(group),
                anchor=max(group),
                inputs=tuple(views.inputs),
                q=q,
                k=kv,
                v=v,
                out_steps=steps,
                scale=core.scale,
                offset=core.offset,
                result=result,
            )
        )
    return groups


#: Local buffers per (batch, head) above this many bytes: the scores no longer stay in L1
#: and the unfused kernels are as good; keep those groups unfused.
MAX_LOCAL_BYTES = 256 * 1024


def attention_dims(g: AttentionGroup) -> tuple[tuple[int, ...], int, int, int, int]:
    """``(batch, T, S, E, Ev)`` of a group."""
    *batch, t, e = view_shape(g.q)
    s = view_shape(g.k)[-2]
    ev = view_shape(g.v)[-1]
    return tuple(batch), t, s, e, ev


def attention_fits(g: AttentionGroup, lanes: int) -> bool:
    """Whether one fused kernel with ``lanes``-wide float vectors takes this group: ``Ev`` a
    multiple of the lanes and the per-head working set small enough to stay in cache."""
    _, t, s, e, ev = attention_dims(g)
    sp = -(-s // lanes) * lanes
    local = 4 * (e * sp + s * ev + 4 * (e + sp))
    return lanes > 1 and ev % lanes == 0 and t > 0 and s > 0 and local <= MAX_LOCAL_BYTES
