"""Find the float op feeding an activation quantize: the chains one fused kernel replaces.

Where it sits: the ``fuse-prologue`` pass (``passes/ir/fuse_prologue.py``) asks
:func:`find_prologues` for the chains of a function whose ``rq.quantize`` a target kernel
can fuse (its ``accept`` predicate: on llvm, quantizes that ``select-kernels`` gave the AVX2
micro-kernel) and marks each chain's ops; the TVM emitter then emits
``x86.prologue.te_prologue_quantize`` in place of its ``rq.quantize``.

A chain ends in an affine ``rq.quantize`` the micro-kernel takes and is, reading backwards
through ``rq.reshape`` ops that keep the last dim (the ``[B, T, C] → [B·T, C]`` of a
linear's input)::

    quantize(gelu(add(y, bias)))        the MLP: fc → bias → GELU → proj's quantize
    quantize(gelu(y))                   (no bias, or a bias already in y)
    quantize(layer_norm(x, γ, β))       pre-norm blocks: ln → q/k/v or fc quantize
    quantize(layer_norm(r + (y + b)))   ... with the residual add before it (``y + b`` a
    quantize(layer_norm(r + z))         linear's output and bias), when ``h = r + ...``'s
                                        other uses all come after the quantize: the
                                        kernel writes ``h`` for them

``gelu`` is the exact (erf) one; ``bias`` and ``γ``/``β`` are ``f32 [K]`` values, ``K`` the
quantizer's row length (layer norm over the last dim only). Every intermediate has exactly
one use, the next op of the chain; otherwise the chain is left unfused, as is any chain the
pattern does not match (the ops are then emitted one by one, as before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rqcompile.ir.core import Func, Op, Value
from rqcompile.ir.uses import Uses

__all__ = ["PROLOGUES", "PrologueChain", "find_prologues"]


@dataclass(frozen=True)
class PrologueChain:
    """One fused ``quantize(op(x))``: the ops it replaces and what the kernel computes.

    ``inputs`` are ``x``, the ``residual`` inputs (``layer_norm`` of ``x + r``: ``r``, or
    ``y, bias`` for ``x + (y + bias)``), then the op's parameters (``gelu``: the bias, if
    absorbed; ``layer_norm``: ``γ``, ``β``). ``h``: the residual sum, when ops outside the
    chain use it (the kernel then writes it). ``anchor`` is the quantize's index,
    ``quantize`` the op.
    """

    ops: frozenset[int]
    anchor: int
    prologue: str
    inputs: tuple[Value, ...]
    eps: float
    quantize: Op
    residual: int = 0
    h: Value | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything the kernel depends on (with the input types)."""
        types = tuple(v.type for v in self.inputs)
        q = self.quantize
        attrs = tuple(sorted((k, str(v)) for k, v in q.attrs))
        return (self.prologue, types, self.eps.hex(), q.operands[0].type, attrs,
                self.residual, self.h is not None)  # fmt: skip


def _dims(v: Value) -> tuple[int, ...] | None:
    """Static dims; in a symbolic build (``targets/tvm/symbolic.py``) a dynamic dim is the TIR
    expression its type carries, the same object wherever the expression is the same."""
    shape = v.type.shape
    if None in shape:
        return None
    return tuple(d if not isinstance(d, int) else int(d) for d in shape)  # type: ignore[misc]


def _is_vec(v: Value, k: int) -> bool:
    return v.type.dtype == "f32" and _dims(v) == (k,)


def _skip_reshapes(g: Uses, v: Value, k: int, ops: set[int]) -> tuple[Value, int | None]:
    """Walk back from ``v`` through single-use reshapes that keep the last dim ``k``; return
    the first value not made by one, and the index of the op that made it (single use)."""
    while True:
        pi = g.single_producer(v)
        if pi is None:
            return v, None
        op = g.f.ops[pi]
        src = op.operands[0] if op.operands else None
        dims = None if src is None else _dims(src)
        if op.name != "rq.reshape" or not dims or dims[-1] != k:
            return v, pi
        ops.add(pi)
        v = src


def _numel(v: Value) -> int:
    dims = _dims(v) or (1,)
    n = dims[0]  # not 1 * dims[0]: symbolic products then print alike (batch * seq * 32)
    for d in dims[1:]:
        n *= d
    return n


def _same_numel(a: Value, b: Value) -> bool:
    """Equal element counts (symbolic ones compared as printed: the same product of dims)."""
    return str(_numel(a)) == str(_numel(b))


def _bias_add(g: Uses, v: Value, k: int, ops: set[int]) -> tuple[Value, Value] | None:
    """``(y, bias)`` if ``v`` (single use) is ``add(y, bias [K])`` through single-use
    reshapes, ``y`` with as many elements as ``v`` and rows of ``K``; the ops go into
    ``ops``. The fused kernels read ``y`` as ``[rows, K]``."""
    seen: set[int] = set()
    _, ai = _skip_reshapes(g, v, k, seen)
    if ai is None or g.f.ops[ai].name != "rq.add":
        return None
    add = g.f.ops[ai]
    for y, bias in (add.operands, add.operands[::-1]):
        dims = _dims(y)
        full = (y.type.dtype == "f32" and dims and dims[-1] == k
                and _same_numel(y, v))  # fmt: skip
        if full and _is_vec(bias, k):
            ops |= seen | {ai}
            return y, bias
    return None


def _residual(g: Uses, h: Value, k: int, qi: int, ln: int,
              ops: set[int]) -> tuple[Value, tuple[Value, ...], Value | None] | None:  # fmt: skip
    """``(x, residual, h or None)`` when the layer norm's input ``h`` is ``x + r`` or
    ``x + (y + bias)`` (module docstring) and ``h``'s other uses come after the quantize
    ``qi``; the ops go into ``ops``."""
    ai = g.producer.get(h.id)
    if ai is None or g.f.ops[ai].name != "rq.add" or h.type.dtype != "f32":
        return None
    others = [u for u in g.uses.get(h.id, []) if u != ln]
    if any(0 <= u < qi for u in others):
        return None
    hd = _dims(h)
    lhs, rhs = g.f.ops[ai].operands
    for x, other in ((lhs, rhs), (rhs, lhs)):
        if _dims(x) != hd or x.type.dtype != "f32":
            continue
        found: set[int] = set()
        biased = _bias_add(g, other, k, found)
        if biased is not None:
            residual: tuple[Value, ...] = biased
        elif other.type.dtype == "f32" and _same_numel(other, h) and _dims(other):
            if _dims(other)[-1] != k:  # type: ignore[index]
                continue
            residual = (other,)
        else:
            continue
        ops |= found | {ai}
        return x, residual, (h if others else None)
    return None


#: PROLOGUES: the float ops a chain may end in (before its quantize).
PROLOGUES = ("gelu", "layer_norm")


def _chain(g: Uses, qi: int, accept: Callable[[Op], bool]) -> PrologueChain | None:
    q = g.f.ops[qi]
    x = q.operands[0]
    dims = _dims(x)
    if not dims or len(dims) < 2 or x.type.dtype != "f32":
        return None
    k = dims[-1]
    if not accept(q):
        return None
    ops: set[int] = {qi}
    _, pi = _skip_reshapes(g, x, k, ops)
    if pi is None:
        return None
    op = g.f.ops[pi]
    ops.add(pi)
    if op.name == "rq.layer_norm":
        src, gamma, beta = op.operands
        if _dims(src) is None or not (_is_vec(gamma, k) and _is_vec(beta, k)):
            return None
        eps = float(op.attr("eps"))  # type: ignore[arg-type]
        res = _residual(g, src, k, qi, pi, ops)
        if res is None:
            return PrologueChain(frozenset(ops), qi, "layer_norm", (src, gamma, beta), eps, q)
        x, residual, h = res
        return PrologueChain(frozenset(ops), qi, "layer_norm", (x, *residual, gamma, beta), eps,
                             q, residual=len(residual), h=h)  # fmt: skip
    if op.name != "rq.gelu" or str(op.attr("approximate")) != "none":
        return None
    src = op.operands[0]
    if _dims(src) is None or src.type.dtype != "f32":
        return None
    biased = _bias_add(g, src, k, ops)
    inputs: tuple[Value, ...] = biased if biased is not None else (src,)
    return PrologueChain(frozenset(ops), qi, "gelu", inputs, 0.0, q)


def find_prologues(
    func: Func, accept: Callable[[Op], bool] = lambda q: True
) -> list[PrologueChain]:
    """Every fusable chain of ``func`` (module docstring) whose ``rq.quantize`` ``accept``
    takes, in op order; chains never share an op."""
    g = Uses(func)
    out: list[PrologueChain] = []
    taken: set[int] = set()
    for i, op in enumerate(func.ops):
        if op.name != "rq.quantize":
            continue
        chain = _chain(g, i, accept)
        if chain is None or taken & chain.ops:
            continue
        taken |= chain.ops
        out.append(chain)
    return out
