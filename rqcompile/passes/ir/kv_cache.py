"""``kv-cache``: derive ``prefill`` and ``decode`` functions from a decoder LM's ``main``.

``main(ids: (B, T)) -> logits (B, T, V)`` was converted for one length ``T``, the longest
context. Generating with it re-runs all ``T`` positions for each new token. This pass adds

* ``prefill(ids (B, T)) -> (logits, cache_0, ..., cache_{n-1})``: ``main`` with the cached
  operands as extra outputs. The runtime pads a prompt at the end to ``T``: exact for a causal
  model, since position ``t`` only sees positions ``<= t``.
* ``decode(ids (B, 1), pos i64[B], cache_0, ..., cache_{n-1}) -> (logits (B, 1, V),
  cache_0', ..., cache_{n-1}')``: one token per row, row ``b`` at position ``pos[b]`` (rows
  of a ragged batch are at different positions). Each cache input has its operand's full
  shape (sequence axis ``T``); ``decode`` writes each row's new entry at its ``pos`` with
  ``rq.cache_write`` (the cache's only use) and returns the written caches. Targets may
  write in place (llvm does, with relax ``call_tir_inplace``): a step then moves one row per
  cache, not the cache.

How: a *sequence-axis analysis*. Axis 1 of the ids argument is the query axis; each value
that depends on it records where the axis lies (``axis``, and ``inner``: the size of the
dims merged inside it by a reshape, so ``(B, T, C) -> (B*T, C)`` keeps track of it). Every
op either carries the axis through unchanged in meaning (elementwise ops with broadcasting,
row-wise activation quantizers, integer matmuls over rows, layer/RMS norms, softmax over
another axis, reshape, permute, ...), and ``decode`` runs the same op with the axis at 1; or
it is one of four special cases:

* a float ``rq.matmul`` whose second operand depends on the sequence along its last axis (the
  key side of ``q·kᵀ``) or its contracted axis (the value side of ``att·v``): that operand is
  cached. ``decode`` takes the cache and uses ``rq.cache_write(cache, new_row, pos)``;
* ``rq.sdpa`` (``is_causal=True``; ``F.scaled_dot_product_attention``): its k and v are
  cached, and ``decode`` runs ``rq.cache_attention(q, k, v, pos)`` (``rq.sdpa``'s causal
  rule is relative to the query length, 1 in decode);
* a constant aligned with the sequence axis (the folded position embedding ``(T, C)``, the
  causal mask ``(T, T)``, RoPE tables): ``decode`` gathers its row ``pos`` with ``rq.take``;
* ``rq.causal_mask``, whose rule depends on the query length: ``decode`` masks with row
  ``pos`` of the equivalent constant mask.

Attention over the live prefix (:meth:`_Analysis.fuse_attention`): where a decode attention
``softmax(mask(q·K [· scale]))·V`` reads two written caches and its mask hides exactly the
keys after ``pos`` (checked on the mask constant: the causal triangle, or 0 / <= -1e4 for an
additive mask), it becomes one ``rq.cache_attention``, which a target runs over rows
``<= pos`` only; hidden keys weigh 0 either way, so the result is the same. Other masks (a
sliding window) keep the explicit form over the whole cache.

Batch ``B > 1``: ``pos`` is ``(B,)``; ``rq.cache_write`` writes row ``b`` at ``pos[b]`` and
the gathered constant rows are moved to axis 0, so the batch must be axis 0 of every cached
operand and of every value a position constant is broadcast against (checked); a constant
expanded over the batch (HF's ``(B, 1, T, T)`` mask) is gathered from one copy after checking
that the copies are equal.

Every attention whose keys are cached must be causally masked before its softmax (checked:
the mask constant must hide every key after the query), since cache rows after ``pos`` are
stale and prefill pads at the end. ``rq.qbmm`` (``quantize_attention=True``) is refused: it
quantizes ``att·v``'s value operand in blocks along the sequence, so the model is not causal.
Anything else raises :class:`UnsupportedOpError` naming the op, its location and why.

Before::

    func @main(%0: tensor<1x32xi64>) -> tensor<1x32x65xf32> { ... }

After (``main`` unchanged)::

    func @prefill(%0: tensor<1x32xi64>) -> (tensor<1x32x65xf32>, tensor<1x4x16x32xf32>, ...)
    func @decode(%0: tensor<1x1xi64>, %1: tensor<1xi64>, %2: tensor<1x4x16x32xf32>, ...)
        (``%1`` is ``pos``: one position per batch row)
        -> (tensor<1x1x65xf32>, tensor<1x4x16x32xf32>, ...)

Numerics: per-token quantizers see the same rows, so integer results are identical; float
attention sums over the live cache entries (hidden ones are exactly 0 after softmax in the
full forward), so only float summation order can differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rqcompile.errors import UnsupportedOpError
from rqcompile.ir.core import Func, Module, Op, Value
from rqcompile.ir.ops import get_op
from rqcompile.ir.types import TensorType
from rqcompile.passes.infra import PassResult, register_pass

__all__ = ["GENERATION_FUNCS", "KVCache", "cache_axis", "func_as_main", "generation_funcs"]

#: The functions this pass adds, in the order targets build them.
GENERATION_FUNCS = ("prefill", "decode")

#: value id -> (axis, inner): the sequence factor lies in ``axis``, with ``inner`` elements of
#: that axis per sequence step (1 unless a reshape merged trailing dims into it)
Seq = tuple[int, int]

_UNARY = {
    "rq.add_scalar", "rq.mul_scalar", "rq.gelu", "rq.relu", "rq.silu", "rq.tanh",
    "rq.sigmoid", "rq.rsqrt", "rq.pow_scalar", "rq.cast", "rq.logical_not",
}  # fmt: skip
_BROADCAST = {"rq.add", "rq.sub", "rq.mul", "rq.div", "rq.masked_fill", "rq.where",
              "rq.compare", "rq.logical"}  # fmt: skip
#: row-wise matmuls: op -> how many leading operands are the activation side (rows = tokens)
_ROW_OPERANDS = {"rq.int_matmul": 3, "rq.xnor_popcount_matmul": 3, "rq.sparse24_matmul": 3,
                 "rq.wo_matmul": 1}  # fmt: skip
_ROW_MATMULS = set(_ROW_OPERANDS)


def generation_funcs(mod: Module) -> bool:
    """Whether ``mod`` has the ``prefill`` and ``decode`` functions this pass adds."""
    names = {f.name for f in mod.funcs}
    return {"prefill", "decode"} <= names


def func_as_main(mod: Module, name: str) -> Module:
    """``mod`` with only function ``name``, renamed ``main`` (targets that build one function
    per library build each generation function this way)."""
    f = mod.func(name)
    return mod.replace(funcs=(Func("main", f.args, f.ops, f.outputs),))


def cache_axis(cache: TensorType, row: TensorType) -> int:
    """The sequence axis of a cache: where the cache (length ``T``) and a new row (1) differ."""
    diff = [i for i, (c, r) in enumerate(zip(cache.shape, row.shape, strict=True)) if c != r]
    if len(diff) != 1:
        raise UnsupportedOpError(f"cache {cache} and its row {row} differ in {len(diff)} axes.")
    return diff[0]


class _Fail(Exception):
    pass


@register_pass
@dataclass(frozen=True)
class KVCache:
    """kv-cache: add ``prefill`` and ``decode`` (one token, cached keys/values) to an LM.

    Before:  func @main(%ids: tensor<BxTxi64>) -> tensor<BxTxVxf32>
    After:   @main unchanged; func @prefill(%ids) -> (logits, caches...);
             func @decode(%id: tensor<Bx1xi64>, %pos: tensor<Bxi64>, caches...)
                 -> (tensor<Bx1xVxf32>, written caches...)
    See the module docstring for the analysis. Numerics: integer parts exact; float attention
    differs from the full forward by summation order only.

    ``in_place=False`` derives the earlier decode instead, kept to measure against
    (``benchmarks/decode.py --select``): each cache merged with its new row by
    ``rq.where(iota == pos, row, cache)`` (a whole new cache per step), attention over all
    ``T`` rows, and the new rows returned for the runtime to copy in.
    """

    name: ClassVar[str] = "kv-cache"
    in_place: bool = True

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        if generation_funcs(mod):
            return PassResult(mod, False)
        prefill, decode, consts = _Analysis(mod, in_place=self.in_place).run()
        funcs = (*(f for f in mod.funcs if f.name not in ("prefill", "decode")), prefill, decode)
        return PassResult(Module(funcs, {**mod.constants, **consts}), True)


class _Analysis:
    def __init__(self, mod: Module, *, in_place: bool = True) -> None:
        self.mod = mod
        self.in_place = in_place
        self.f = mod.main
        ids = [v.id for f in mod.funcs for v in (*f.args, *(r for op in f.ops for r in op.results))]
        self.next_id = max(ids, default=0) + 1
        self.seq: dict[int, Seq] = {}
        self.dec: dict[int, Value] = {}  # main value id -> decode value
        self.ops: list[Op] = []  # decode ops
        self.consts: dict[str, torch.Tensor] = {}
        self.cached: list[tuple[Value, Value, Value]] = []  # (main operand, cache arg, new row)
        self.unmasked: set[int] = set()  # scores over cached keys not yet causally masked
        #: decode value id of masked scores whose mask hides exactly the keys after pos ->
        #: index of the scores operand of the masking op (for :meth:`fuse_attention`)
        self.exact: dict[int, int] = {}
        self.op: Op | None = None

    # -- helpers ---------------------------------------------------------------------------

    def fail(self, why: str) -> None:
        raise _Fail(why)

    def value(self, t: TensorType) -> Value:
        v = Value(self.next_id, t)
        self.next_id += 1
        return v

    def emit(self, opname: str, operands: Sequence[Value], /, **attrs: Any) -> tuple[Value, ...]:
        opdef = get_op(opname)
        attrs = opdef.with_defaults(attrs)
        types = opdef.result_types([v.type for v in operands], attrs)
        results = tuple(self.value(t) for t in types)
        loc = self.op.loc if self.op is not None else None
        self.ops.append(Op(opname, tuple(operands), results, attrs, loc))
        return results

    def const(self, name: str, t: torch.Tensor) -> Value:
        base, i = name, 0
        while name in self.mod.constants or name in self.consts:
            i += 1
            name = f"{base}_{i}"
        self.consts[name] = t
        dtype = TensorType.of(t).dtype
        return self.emit("rq.const", (), name=name, shape=tuple(t.shape), dtype=dtype)[0]

    def dshape(self, v: Value) -> tuple[int, ...]:
        """Decode shape of a main value: its sequence factor has size 1."""
        shape = tuple(int(d) for d in v.type.shape)  # type: ignore[arg-type]
        s = self.seq.get(v.id)
        if s is None:
            return shape
        a = s[0]
        return (*shape[:a], shape[a] // self.T, *shape[a + 1 :])

    # -- driver ----------------------------------------------------------------------------

    def run(self) -> tuple[Func, Func, dict[str, torch.Tensor]]:
        f = self.f
        if len(f.args) != 1:
            raise UnsupportedOpError(
                f"kv-cache: @main takes {len(f.args)} inputs; generation needs a model whose "
                "only input is the token ids (B, T). Capture it without attention_mask or "
                "other extra inputs."
            )
        (ids,) = f.args
        if ids.type.dtype not in ("i64", "i32") or ids.type.rank != 2 or not ids.type.is_static:
            raise UnsupportedOpError(
                f"kv-cache: @main's input is {ids.type}; generation needs static token ids "
                "(B, T) of type i64 or i32."
            )
        self.B, self.T = (int(d) for d in ids.type.shape)  # type: ignore[arg-type]
        if self.T < 2:
            raise UnsupportedOpError("kv-cache: the model was converted for T = 1 token.")
        self.seq[ids.id] = (1, 1)
        d_ids = self.value(TensorType((self.B, 1), ids.type.dtype))
        self.pos = self.value(TensorType((self.B,), "i64"))
        self.dec[ids.id] = d_ids
        for op in f.ops:
            self.op = op
            try:
                self.visit(op)
            except _Fail as e:
                where = f" at {op.loc}" if op.loc is not None else ""
                raise UnsupportedOpError(
                    f"kv-cache: cannot derive one-token decoding for {op.name}{where}: {e}"
                ) from None
        self.op = None
        if not f.outputs or f.outputs[0].id not in self.seq or self.seq[f.outputs[0].id] != (1, 1):
            raise UnsupportedOpError(
                "kv-cache: @main's first output must be per-token logits (B, T, V) with the "
                "sequence on axis 1."
            )
        for o in f.outputs[1:]:
            if o.id not in self.seq:
                raise UnsupportedOpError(f"kv-cache: output {o.type} does not depend on the ids.")
        if not self.cached:
            raise UnsupportedOpError(
                "kv-cache: no attention over the sequence was found (no rq.matmul whose key or "
                "value operand depends on the tokens); nothing to cache."
            )
        prefill = Func("prefill", f.args, f.ops, (*f.outputs, *(m for m, _, _ in self.cached)))
        outputs = (*(self.dec[o.id] for o in f.outputs), *(r for _, _, r in self.cached))
        self.fuse_attention(outputs)
        live = {v.id for v in outputs}
        kept = []
        for op in reversed(self.ops):  # constants and ops only the full forward needs
            if any(r.id in live for r in op.results):
                kept.append(op)
                live.update(v.id for v in op.operands)
        used = {str(op.attr("name")) for op in kept if op.name == "rq.const"}
        decode = Func(
            "decode",
            (d_ids, self.pos, *(c for _, c, _ in self.cached)),
            tuple(reversed(kept)),
            outputs,
        )
        return prefill, decode, {k: v for k, v in self.consts.items() if k in used}

    def visit(self, op: Op) -> None:
        if op.name == "rq.const" or not any(v.id in self.seq for v in op.operands):
            self.copy(op)
            return
        handler = getattr(self, "op_" + op.name.removeprefix("rq."), None)
        if op.name in _UNARY:
            handler = self.op_unary
        elif op.name in _BROADCAST:
            handler = self.op_broadcast
        elif op.name in _ROW_MATMULS:
            handler = self.op_row_matmul
        if handler is None:
            self.fail("the sequence-axis analysis has no rule for this op")
        handler(op)

    def copy(self, op: Op, **attrs: Any) -> tuple[Value, ...]:
        operands = [self.dec[v.id] for v in op.operands]
        a = {**op.attrs_dict, **attrs}
        results = self.emit(op.name, operands, **a)
        for r, d in zip(op.results, results, strict=True):
            self.dec[r.id] = d
        return results

    def same(self, op: Op, s: Seq, **attrs: Any) -> None:
        """Run ``op`` on the decode operands; every result carries ``s``."""
        self.copy(op, **attrs)
        for r in op.results:
            self.seq[r.id] = s
            if tuple(int(d) for d in self.dec[r.id].type.shape) != self.dshape(r):  # type: ignore[arg-type]
                self.fail(f"decode result {self.dec[r.id].type} does not match the analysis")

    def only(self, op: Op) -> tuple[int, Seq]:
        """The single sequence-carrying operand (index, seq); fails for more than one."""
        found = [(i, self.seq[v.id]) for i, v in enumerate(op.operands) if v.id in self.seq]
        if len(found) != 1:
            self.fail("more than one operand depends on the tokens")
        return found[0]

    # -- rules -----------------------------------------------------------------------------

    def op_unary(self, op: Op) -> None:
        self.same(op, self.seq[op.operands[0].id])
        if op.operands[0].id in self.unmasked:
            self.unmasked.add(op.result.id)

    def op_repeat_blocks(self, op: Op) -> None:
        s = self.seq[op.operands[0].id]
        if s[0] == op.operands[0].type.rank - 1:
            self.fail("it repeats along the sequence axis")
        self.same(op, s)

    def op_quantize(self, op: Op) -> None:
        s = self.seq[op.operands[0].id]
        if s[0] == op.operands[0].type.rank - 1:
            self.fail("its blocks run along the sequence axis (tokens would share a scale)")
        self.same(op, s)

    def op_row_matmul(self, op: Op) -> None:
        n = _ROW_OPERANDS[op.name]
        ss = {self.seq.get(v.id) for v in op.operands[:n]}
        if any(v.id in self.seq for v in op.operands[n:]) or len(ss) != 1 or None in ss:
            self.fail("the weights depend on the tokens, or the activation's rows do not")
        (s,) = ss
        if s is None or s[0] != 0:
            self.fail("the sequence is not along the activation rows")
        self.same(op, s)

    def op_linear(self, op: Op) -> None:
        x, w = op.operands
        s = self.seq.get(x.id)
        if s is None or w.id in self.seq or s[0] == x.type.rank - 1:
            self.fail("the weight depends on the tokens, or it contracts the sequence axis")
        assert s is not None
        self.same(op, s)

    def op_layer_norm(self, op: Op) -> None:
        i, s = self.only(op)
        norm_dims = op.operands[1].type.rank if len(op.operands) > 1 else 1
        if i != 0 or s[0] >= op.operands[0].type.rank - norm_dims:
            self.fail("it normalizes over the sequence axis")
        self.same(op, s)

    op_rms_norm = op_layer_norm

    def op_softmax(self, op: Op) -> None:
        x = op.operands[0]
        s = self.seq[x.id]
        if int(op.attr("axis")) % x.type.rank == s[0]:  # type: ignore[operator]
            self.fail("it normalizes over the sequence axis")
        if x.id in self.unmasked:
            self.fail(
                "attention over cached keys without a causal mask: cached rows after the "
                "current position (and prefill's padding) would be attended to. kv-cache "
                "needs a causal (decoder) model."
            )
        self.same(op, s)

    def op_mean(self, op: Op) -> None:
        x = op.operands[0]
        a, inner = self.seq[x.id]
        axes = sorted(int(ax) % x.type.rank for ax in op.attr("axes"))  # type: ignore[union-attr]
        if a in axes:
            self.fail("it averages over the sequence axis")
        if not op.attr("keepdim"):
            a -= sum(ax < a for ax in axes)
        self.same(op, (a, inner))

    def op_embedding(self, op: Op) -> None:
        i, s = self.only(op)
        if i != 0:
            self.fail("the table depends on the tokens")
        self.same(op, s)

    def op_permute(self, op: Op) -> None:
        a, inner = self.seq[op.operands[0].id]
        dims = [int(d) for d in op.attr("dims")]  # type: ignore[union-attr]
        self.same(op, (dims.index(a), inner))

    def op_slice(self, op: Op) -> None:
        x = op.operands[0]
        s = self.seq[x.id]
        if int(op.attr("axis")) % x.type.rank == s[0]:  # type: ignore[operator]
            self.fail("it slices the sequence axis")
        self.same(op, s)

    def op_concat(self, op: Op) -> None:
        ss = {self.seq.get(v.id) for v in op.operands}
        x = op.operands[0]
        if len(ss) != 1 or None in ss:
            self.fail("only some inputs depend on the tokens")
        (s,) = ss
        assert s is not None
        if int(op.attr("axis")) % x.type.rank == s[0]:  # type: ignore[operator]
            self.fail("it concatenates along the sequence axis")
        self.same(op, s)

    def op_reshape(self, op: Op) -> None:
        x, y = op.operands[0], op.result
        a, inner = self.seq[x.id]
        xs = [int(d) for d in x.type.shape]  # type: ignore[arg-type]
        ys = [int(d) for d in y.type.shape]  # type: ignore[arg-type]
        stride = inner * math.prod(xs[a + 1 :])  # elements per sequence step, in flat order
        for b in range(len(ys)):
            suffix = math.prod(ys[b + 1 :])
            if suffix <= stride < suffix * ys[b]:
                break
        else:
            self.fail("the sequence axis is not kept")
        if stride % suffix or ys[b] % (self.T * (stride // suffix)):
            self.fail(f"the sequence axis is split across dims of {tuple(ys)}")
        new = (b, stride // suffix)
        shape = list(ys)
        shape[b] //= self.T
        self.seq[y.id] = new
        (r,) = self.emit("rq.reshape", [self.dec[x.id]], shape=tuple(shape))
        self.dec[y.id] = r

    def op_broadcast_to(self, op: Op) -> None:
        x = op.operands[0]
        a, inner = self.seq[x.id]
        shape = [int(d) for d in op.attr("shape")]  # type: ignore[union-attr]
        b = a + len(shape) - x.type.rank
        shape[b] //= self.T
        self.seq[op.result.id] = (b, inner)
        (r,) = self.emit("rq.broadcast_to", [self.dec[x.id]], shape=tuple(shape))
        self.dec[op.result.id] = r

    def op_broadcast(self, op: Op) -> None:
        out = op.results[0]
        rank = out.type.rank
        seqs = {}
        for v in op.operands:
            if v.id in self.seq:
                a, inner = self.seq[v.id]
                seqs[v.id] = (a + rank - v.type.rank, inner)
        if len(set(seqs.values())) != 1:
            self.fail("its operands carry the sequence on different axes")
        (s,) = set(seqs.values())
        a = s[0]
        operands = []
        masking = op.name in ("rq.masked_fill", "rq.add")
        masked = exact = False
        for v in op.operands:
            d = self.dec[v.id]
            if v.id not in self.seq:
                ax = a - (rank - v.type.rank)
                size = v.type.shape[ax] if ax >= 0 else 1
                if size != 1:
                    if size != out.type.shape[a] or s[1] != 1 or size != self.T:
                        self.fail(f"operand {v.type} is aligned with the sequence axis")
                    if masking and any(u.id in self.unmasked for u in op.operands):
                        masked = masked or self.causal(op, v, ax)
                        exact = exact or self.causal(op, v, ax, exact=True)
                    d = self.take(v, ax, out.type, a)
            operands.append(d)
        results = self.emit(op.name, operands, **op.attrs_dict)
        for r, d in zip(op.results, results, strict=True):
            self.dec[r.id] = d
            self.seq[r.id] = s
        if exact:
            scores = [i for i, v in enumerate(op.operands) if v.id in self.unmasked]
            if len(scores) == 1:
                self.exact[results[0].id] = scores[0]
        if any(v.id in self.unmasked for v in op.operands) and not masked:
            self.unmasked.add(out.id)

    def op_causal_mask(self, op: Op) -> None:
        x = op.operands[0]
        a, inner = self.seq[x.id]
        r = x.type.rank
        if a != r - 2 or inner != 1:
            self.fail("its query axis is not the sequence axis")
        t, s = int(x.type.shape[-2]), int(x.type.shape[-1])  # type: ignore[arg-type]
        block = ~torch.ones(t, s, dtype=torch.bool).tril(s - t)
        mask = self.const("kv_cache.causal_mask", block)
        row = self.at_pos(mask, 0, x.type, a)
        fill = float(op.attr("fill"))  # type: ignore[arg-type]
        (y,) = self.emit("rq.masked_fill", [self.dec[x.id], row], value=fill)
        if t == s == self.T and fill <= -1e4 and x.id in self.unmasked:
            self.exact[y.id] = 0  # row pos of tril(0): hides exactly the keys after pos
        self.dec[op.result.id] = y
        self.seq[op.result.id] = (a, inner)

    def op_matmul(self, op: Op) -> None:
        x, w = op.operands
        if x.type.rank < 2 or w.type.rank < 2:
            self.fail("1-D matmul operands")
        rank = op.result.type.rank
        sx, sw = self.seq.get(x.id), self.seq.get(w.id)
        if sx is None:
            self.fail("only the right operand depends on the tokens")
        assert sx is not None
        ax, ix = sx
        if ax == x.type.rank - 1:
            self.fail("the left operand's contracted axis is the sequence axis")
        out_axis = ax + rank - x.type.rank
        if sw is None:  # x @ W: a batched projection
            self.same(op, (out_axis, ix))
            return
        aw, iw = sw
        if (
            ax != x.type.rank - 2
            or ix != 1
            or iw != 1
            or aw < w.type.rank - 2
            or x.type.shape[ax] != self.T
        ):
            self.fail("both operands depend on the tokens, but not as attention (q·kᵀ or att·v)")
        if int(w.type.shape[aw]) != self.T:  # type: ignore[arg-type]
            self.fail(f"the key/value operand {w.type} has a sequence axis of another size")
        key_side = aw == w.type.rank - 1
        keys = self.cache_rows(w) if key_side else None
        (y,) = self.emit("rq.matmul", [self.dec[x.id], keys or self.cache(w, aw)])
        self.dec[op.result.id] = y
        self.seq[op.result.id] = (out_axis, 1)
        if key_side:
            self.unmasked.add(op.result.id)

    def cache(self, w: Value, aw: int) -> Value:
        """Cache ``w`` (sequence along ``aw``): a new decode argument of ``w``'s full shape with
        decode's new row written at ``pos`` (``rq.cache_write``, in place on targets that can);
        returns that updated cache, which is also a decode output. A value cached twice (the
        keys' source that is also the values) shares one cache."""
        for m, _, full in self.cached:
            if self.in_place and m.id == w.id and full.type == w.type:
                return full
        cache = self.value(w.type)
        new_row = self.dec[w.id]
        if self.B > 1 and (aw == 0 or int(w.type.shape[0]) != self.B):  # type: ignore[arg-type]
            self.fail(
                f"the cached operand {w.type} does not have the batch ({self.B}) on axis "
                "0, which per-row positions need; convert at batch 1"
            )
        if not self.in_place:
            return self.select(w, aw, cache, new_row)
        (full,) = self.emit("rq.cache_write", [cache, new_row, self.pos], axis=aw)
        self.cached.append((w, cache, full))
        return full

    def cache_rows(self, w: Value) -> Value | None:
        """Keys ``kᵀ`` (…, E, T) that are the transpose of a (…, T, E) value ``k``: cache ``k``
        instead (one contiguous row per step, where a column of ``kᵀ`` is ``E`` scattered
        stores, one cache line each) and return the transpose of the written cache (which
        :meth:`fuse_attention` folds into ``rq.cache_attention``). ``None``: cache ``w``."""
        r = w.type.rank
        prod = next((o for o in self.f.ops if w in o.results), None)
        if (
            not self.in_place
            or prod is None
            or prod.name != "rq.permute"
            or tuple(prod.attr("dims")) != (*range(r - 2), r - 1, r - 2)  # type: ignore[arg-type]
        ):
            return None
        k = prod.operands[0]
        if self.seq.get(k.id) != (r - 2, 1):
            return None
        full = self.cache(k, r - 2)
        return self.emit("rq.permute", [full], dims=(*range(r - 2), r - 1, r - 2))[0]

    def select(self, w: Value, aw: int, cache: Value, new_row: Value) -> Value:
        """``in_place=False``: ``rq.where(iota == pos, new_row, cache)``, a new full cache;
        decode returns ``new_row`` (the runtime copies it in)."""
        pos = self.pos
        if self.B == 1:
            iota_shape: tuple[int, ...] = (self.T,) + (1,) * (w.type.rank - 1 - aw)
        else:  # each row's own position: pos (B,) as (B, 1, ..., 1) against the batch axis 0
            iota_shape = (1,) * aw + (self.T,) + (1,) * (w.type.rank - 1 - aw)
            pos = self.emit("rq.reshape", [pos], shape=(self.B,) + (1,) * (w.type.rank - 1))[0]
        iota = self.const(f"kv_cache.iota{self.T}", torch.arange(self.T).reshape(iota_shape))
        at = self.emit("rq.compare", [iota, pos], fn="eq")[0]
        full = self.emit("rq.where", [at, new_row, cache])[0]
        self.cached.append((w, cache, new_row))
        return full

    def op_qbmm(self, op: Op) -> None:
        """Refused, with the reason: ``quantize_attention=True`` quantizes ``att·v``'s value
        operand (``vᵀ``, the sequence last) in blocks along the sequence, so every token of
        a channel shares one scale and a position's output depends on later tokens: the
        model is not causal, and no cache of past rows reproduces it."""
        self.fail(
            "quantize_attention=True (rq.qbmm): the value operand of att·v is quantized in "
            "blocks along the sequence axis, so all tokens of a channel share one scale and "
            "each position's output depends on later tokens (the QAT model itself is not "
            "causal); no cache of past rows can reproduce it. Prepare with "
            "quantize_attention=False to generate."
        )

    def op_sdpa(self, op: Op) -> None:
        """``rq.sdpa(q, k, v, causal)``: k and v are cached; decode runs the explicit form
        ``softmax(masked_fill(q·kᵀ·scale, row pos of the causal mask)) · v`` (rq.sdpa has no
        mask operand, and its ``causal`` masks relative to the query length, 1 in decode)."""
        q, k, v = op.operands
        r = q.type.rank
        for name, u in (("q", q), ("k", k), ("v", v)):
            s = self.seq.get(u.id)
            if s is None or s != (r - 2, 1) or int(u.type.shape[r - 2]) != self.T:  # type: ignore[arg-type]
                self.fail(
                    f"its {name} {u.type} does not carry the sequence on its row axis (axis "
                    f"{r - 2}, length {self.T}): not self-attention over the tokens"
                )
        if not op.attr("causal"):
            self.fail(
                "attention over cached keys without a causal mask (is_causal=False): cached "
                "rows after the current position (and prefill's padding) would be attended "
                "to. kv-cache needs a causal (decoder) model."
            )
        keys, values = self.cache(k, r - 2), self.cache(v, r - 2)
        qd = self.dec[q.id]
        scale = float(op.attr("scale"))  # type: ignore[arg-type]
        if self.in_place and q.type.shape[:-2] == k.type.shape[:-2] == v.type.shape[:-2]:
            (y,) = self.emit(
                "rq.cache_attention", [qd, keys, values, self.pos], scale=scale, key_axis=-2
            )
        else:  # broadcast heads (or in_place=False): the explicit masked form
            dims = (*range(r - 2), r - 1, r - 2)
            kt = self.emit("rq.permute", [keys], dims=dims)[0]
            s = self.emit("rq.matmul", [qd, kt])[0]
            s = self.emit("rq.mul_scalar", [s], value=scale)[0]
            block = ~torch.ones(self.T, self.T, dtype=torch.bool).tril()
            mask = self.const("kv_cache.causal_mask", block)
            row = self.at_pos(mask, 0, q.type, r - 2)
            s = self.emit("rq.masked_fill", [s, row], value=-math.inf)[0]
            att = self.emit("rq.softmax", [s], axis=-1)[0]
            (y,) = self.emit("rq.matmul", [att, values])
        self.dec[op.result.id] = y
        self.seq[op.result.id] = (r - 2, 1)

    # -- decode attention over the live prefix ---------------------------------------------

    def fuse_attention(self, outputs: Sequence[Value]) -> None:
        """Replace each decode attention ``softmax(mask(q·K [· scale]))·V`` over cached ``K``
        and ``V`` (each an ``rq.cache_write`` result; ``K`` as ``kᵀ`` (…, E, T) or through
        the transpose of a (…, T, E) cache), whose mask hides exactly the keys after
        ``pos`` (:attr:`exact`), by one ``rq.cache_attention``: same result (the hidden keys
        weigh 0 either way), and a target reads only the ``pos + 1`` live cache rows. The
        replaced ops are left for the dead-code sweep; anything else stays as it is."""
        prod = {r.id: op for op in self.ops for r in op.results}
        uses: dict[int, int] = {}
        for v in (*(u for op in self.ops for u in op.operands), *outputs):
            uses[v.id] = uses.get(v.id, 0) + 1

        def only_use(v: Value, name: str) -> Op | None:
            o = prod.get(v.id)
            return o if o is not None and o.name == name and uses[v.id] == 1 else None

        def write(v: Value, axis: int) -> bool:
            o = prod.get(v.id)
            return (
                o is not None
                and o.name == "rq.cache_write"
                and int(o.attr("axis")) % v.type.rank == axis  # type: ignore[arg-type]
                and o.operands[2].id == self.pos.id
            )

        for i, op in enumerate(self.ops):
            if op.name != "rq.matmul":
                continue
            att, values = op.operands
            r = att.type.rank
            sm = only_use(att, "rq.softmax")
            if r < 2 or values.type.rank != r or not write(values, r - 2) or sm is None:
                continue
            if int(sm.attr("axis")) % r != r - 1 or sm.operands[0].id not in self.exact:  # type: ignore[arg-type]
                continue
            masking = prod[sm.operands[0].id]
            if uses[sm.operands[0].id] != 1:
                continue
            x = masking.operands[self.exact[sm.operands[0].id]]
            scale = 1.0
            mul = only_use(x, "rq.mul_scalar")
            if mul is not None:
                scale, x = float(mul.attr("value")), mul.operands[0]  # type: ignore[arg-type]
            qk = only_use(x, "rq.matmul")
            if qk is None:
                continue
            q, keys = qk.operands
            key_axis = -1
            if not write(keys, r - 1):
                tr = only_use(keys, "rq.permute")
                if tr is None or tuple(tr.attr("dims")) != (*range(r - 2), r - 1, r - 2):  # type: ignore[arg-type]
                    continue
                keys, key_axis = tr.operands[0], -2
                if not write(keys, r - 2):
                    continue
            lead = q.type.shape[:-2]
            if q.type.rank != r or q.type.shape[-2] != 1 or not (
                lead == keys.type.shape[:-2] == values.type.shape[:-2]
            ):
                continue
            opdef = get_op("rq.cache_attention")
            attrs = opdef.with_defaults({"scale": scale, "key_axis": key_axis})
            operands = (q, keys, values, self.pos)
            if opdef.result_types([v.type for v in operands], attrs) != (op.result.type,):
                continue
            self.ops[i] = Op("rq.cache_attention", operands, op.results, attrs, op.loc)

    # -- position-aligned constants --------------------------------------------------------

    def take(self, v: Value, axis: int, out: TensorType, out_axis: int) -> Value:
        """Row ``pos`` of the constant ``v`` along ``axis`` (see :meth:`at_pos`)."""
        prod = next((o for o in self.f.ops if v in o.results), None)
        if prod is None or prod.name != "rq.const":
            self.fail(
                f"operand {v.type} is aligned with the sequence axis but is computed, not a "
                "constant (only constant position tables and masks can be gathered at pos)"
            )
        d = self.dec[v.id]
        if self.B > 1 and v.type.rank == out.rank and int(v.type.shape[0]) == self.B:  # type: ignore[arg-type]
            # a table expanded over the batch (HF's (B, 1, T, T) mask): per-row positions
            # gather from one copy, which is exact only when every copy is the same
            t = self.mod.constant(str(prod.attr("name")))
            if not bool((t == t[:1]).all()):
                self.fail(
                    f"the position table {v.type} differs between batch rows; per-row "
                    "positions (B > 1) cannot gather it; convert at batch 1"
                )
            d = self.emit("rq.slice", [d], axis=0, start=0, stop=1)[0]
        return self.at_pos(d, axis, out, out_axis)

    def at_pos(self, d: Value, axis: int, out: TensorType, out_axis: int) -> Value:
        """Row ``pos`` of the decode value ``d`` (a constant) along its ``axis``, to broadcast
        (right-aligned) against ``out`` (a main value's type) whose sequence axis is
        ``out_axis``. Batch 1: ``take`` (the axis becomes 1). Batch B > 1 (``pos`` is (B,),
        each row's own position): the B gathered rows go to axis 0, the batch axis of the
        result, and the sequence axis becomes 1."""
        t = self.emit("rq.take", [d, self.pos], axis=axis)[0]
        if self.B == 1:
            return t
        shape = [int(n) for n in d.type.shape]  # type: ignore[arg-type]
        out_rank = out.rank
        off = out_rank - len(shape)
        if out_axis == 0 or int(out.shape[0]) != self.B:  # type: ignore[arg-type]
            self.fail(
                f"{out} does not have the batch ({self.B}) on axis 0, which per-row "
                "positions (B > 1) need; convert at batch 1"
            )
        if off < 0 or (off == 0 and shape[0] != 1):
            self.fail(
                f"the position table {d.type} is not laid out to broadcast over a batch on "
                "axis 0 (its batch-axis size is not 1); per-row positions (B > 1) need that; "
                "convert at batch 1"
            )
        dims = (axis, *(i for i in range(len(shape)) if i != axis))
        t = self.emit("rq.permute", [t], dims=dims)[0]
        target = [self.B] + [
            1 if j == out_axis or j < off else shape[j - off] for j in range(1, out_rank)
        ]
        return self.emit("rq.reshape", [t], shape=tuple(target))[0]

    def causal(self, op: Op, mask: Value, axis: int, *, exact: bool = False) -> bool:
        """Whether the constant ``mask`` hides every key after the query (row ``t`` along
        ``axis``, keys along the last axis); fails for a mask that hides none of them.
        ``exact``: and hides no other key (an ``add`` mask is 0 there), so attention over
        keys ``<= pos`` computes the same thing (:meth:`fuse_attention`)."""
        prod = next((o for o in self.f.ops if mask in o.results), None)
        if prod is None or prod.name != "rq.const" or axis != mask.type.rank - 2:
            return False
        m = self.mod.constant(str(prod.attr("name")))
        if m.shape[-1] != self.T or m.shape[-2] != self.T:
            return False
        m = m.reshape(-1, self.T, self.T)
        future = torch.ones(self.T, self.T, dtype=torch.bool).triu(1)
        if op.name == "rq.masked_fill":
            hides = bool(m[:, future].all()) and float(op.attr("value")) <= -1e4  # type: ignore[arg-type]
            return hides and (not exact or not bool(m[:, ~future].any()))
        if op.name == "rq.add":
            hides = bool((m[:, future] <= -1e4).all())
            return hides and (not exact or bool((m[:, ~future] == 0).all()))
        return False
