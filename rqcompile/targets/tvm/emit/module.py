"""rq IR → TVM relax ``IRModule``: one emitter per IR op, looked up in :data:`EMITTERS`.

The package: ``module.py`` (this driver and the table), ``base.py`` (:class:`Emission`,
shared helpers), ``integer.py`` (integer ops, by kernel-table row), ``float_ops.py`` (float
and layout ops), ``te_ops.py`` (TE computes relax lacks), ``fused.py`` (fused groups),
``cache_ops.py`` (the KV-cache ops of ``decode``: an in-place row write, attention over the
live prefix).

Where it sits: ``build``, phase ``emit`` of ``targets/tvm/pipelines.py``. In: a verified
``rqcompile.ir.Module`` with static shapes. Out: a ``tvm.IRModule`` whose relax function
``main`` takes the IR's arguments followed by one parameter per weight, in the order of
:func:`const_params`.

* **Integer ops** are ``BlockBuilder.emit_te`` calls over the TE computes of :mod:`.kernels`,
  with the op's attributes as keywords. Their PrimFuncs carry ``op_pattern = kOpaque``, so
  relax fusion leaves them whole for ``schedules.schedule_module`` (which finds them by their
  ``rq.kernel`` block annotations).
* **Float and layout ops** are ``relax.op.*`` calls, legalized to TOPI by ``LegalizeOps``.
  ``im2col``, ``causal_mask`` and ``slice`` are TE computes written here.
* **Kernels are chosen by IR passes, not here.** ``select-kernels`` and ``pack-weights``
  (``passes/ir/``) annotate each integer op with its row of the kernel table
  (:mod:`.kernel_table`, ``rq.kernel``) and weight layout (``rq.weight_layout``); the
  emitter builds what the row names.
* **Attention is fused** where ``fuse-attention`` marked a group (``rq.fused``):
  ``softmax(q·kᵀ·scale [mask]) · v`` (explicit or ``rq.sdpa``) with the q/k/v split, bias
  and head transposes around it; :mod:`kernels.attention` emits one kernel for the group
  and the group's other ops are not emitted.
* **The float op before an activation quantize is fused** where ``fuse-prologue`` marked
  a chain (``[bias add →] gelu → quantize``, ``[residual add →] layer_norm → quantize``):
  :mod:`x86.prologue` emits one kernel per chain (the op's output never reaches
  memory).
* **Weights are parameters, not constants.** Every ``rq.const`` becomes a parameter of
  ``main`` named after the constant; the runtime binds ``ir.constants`` to them, so the
  shared library holds code only and an artifact stores each weight once (safetensors).
* **One kernel per distinct signature.** Convert splits grouped convolutions into one matmul
  per group (64 for a depthwise layer), so the same kernel is requested many times.
  :meth:`Emission.emit_te` emits a TE compute once per (kind, operand types, attributes) and
  calls the same PrimFunc after that; ``rq.slice`` passes its start offset at run time for
  the same reason, and wide concats become a tree of 8-input kernels. Together these cut the
  tiny CNN's build from 43 s to about 10 s on 2 cores.

Numerics: integer results are bit-exact against ``targets/reference.py`` (the oracle); float
ops agree to ~1e-6 relative (TOPI float32 vs torch; summation order differs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rqcompile.errors import TargetError, UnsupportedOpError
from rqcompile.ir.core import Func, Module
from rqcompile.ir.types import TensorType
from rqcompile.ir.uses import Uses
from rqcompile.names import identifier  # C-safe names for every target
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.targets.tvm.adapter import relax
from rqcompile.targets.tvm.emit.base import (
    TVM_DTYPES,
    Emission,
    Emitter,
    Expr,
    _binary,
    _dims,
    _scalar,
    _unary,
)
from rqcompile.targets.tvm.emit.float_ops import (
    _avg_pool,
    _broadcast_to,
    _cast,
    _causal_mask,
    _concat,
    _conv2d,
    _embedding,
    _gelu,
    _im2col,
    _layer_norm,
    _masked_fill,
    _logical,
    _logical_not,
    _compare,
    _where,
    _max_pool,
    _mean,
    _permute,
    _pow_scalar,
    _repeat_blocks,
    _reshape,
    _rms_norm,
    _sdpa,
    _slice,
    _take,
    _softmax,
    _spatial,
)
from rqcompile.targets.tvm.emit.cache_ops import _cache_attention, _cache_write
from rqcompile.targets.tvm.emit.fused import (
    _attention_groups,
    _emit_attention,
    _emit_prologue,
    _prologue_chains,
)
from rqcompile.targets.tvm.emit.integer import _packed, _te_op
from rqcompile.targets.tvm.emit.te_ops import te_causal_mask, te_im2col, te_slice
from rqcompile.targets.tvm.kernels import integer as K
from rqcompile.targets.tvm.lowering import passes_for_options

__all__ = [
    "EMITTERS",
    "TVM_DTYPES",
    "Emission",
    "const_params",
    "emit_module",
    "te_causal_mask",
    "te_im2col",
    "te_slice",
]


EMITTERS: dict[str, Emitter] = {
    # integer core (kernels.py; scheduled by schedules.py)
    "rq.quantize": _te_op(K.te_quantize, "quantize"),
    "rq.int_matmul": _packed(K.te_int_matmul, "int_matmul"),
    "rq.xnor_popcount_matmul": _packed(K.te_xnor_popcount_matmul, "xnor_popcount_matmul"),
    "rq.sparse24_matmul": _packed(K.te_sparse24_matmul, "sparse24_matmul"),
    "rq.qbmm": _te_op(K.te_qbmm, "qbmm"),
    "rq.wo_matmul": _packed(K.te_wo_matmul, "wo_matmul", n_x=1),
    "rq.repeat_blocks": _repeat_blocks,
    # float ops
    "rq.linear": _binary(relax.op.linear),
    "rq.add": _binary(relax.op.add),
    "rq.sub": _binary(relax.op.subtract),
    "rq.mul": _binary(relax.op.multiply),
    "rq.div": _binary(relax.op.divide),
    "rq.add_scalar": _scalar(relax.op.add),
    "rq.mul_scalar": _scalar(relax.op.multiply),
    "rq.matmul": _binary(relax.op.matmul),
    "rq.layer_norm": _layer_norm,
    "rq.rms_norm": _rms_norm,
    "rq.softmax": _softmax,
    "rq.gelu": _gelu,
    "rq.relu": _unary(relax.op.nn.relu),
    "rq.silu": _unary(relax.op.nn.silu),
    "rq.tanh": _unary(relax.op.tanh),
    "rq.sigmoid": _unary(relax.op.sigmoid),
    "rq.embedding": _embedding,
    "rq.reshape": _reshape,
    "rq.permute": _permute,
    "rq.slice": _slice,
    "rq.concat": _concat,
    "rq.causal_mask": _causal_mask,
    "rq.masked_fill": _masked_fill,
    "rq.logical": _logical,
    "rq.logical_not": _logical_not,
    "rq.compare": _compare,
    "rq.where": _where,
    "rq.sdpa": _sdpa,
    "rq.conv2d": _conv2d,
    "rq.im2col": _im2col,
    "rq.max_pool2d": _spatial(_max_pool),
    "rq.adaptive_avg_pool2d": _spatial(_avg_pool),
    "rq.mean": _mean,
    "rq.cast": _cast,
    "rq.rsqrt": _unary(relax.op.rsqrt),
    "rq.pow_scalar": _pow_scalar,
    "rq.broadcast_to": _broadcast_to,
    "rq.take": _take,
    # kv-cache decode (cache_ops.py)
    "rq.cache_write": _cache_write,
    "rq.cache_attention": _cache_attention,
}


def _relax_type(t: TensorType) -> Any:
    return relax.TensorType(_dims(t), TVM_DTYPES[t.dtype])


def const_params(ir: Module, func: str = "main") -> tuple[str, ...]:
    """Names of the constants ``func`` reads, in first-use order: its trailing parameters.

    Example:
        >>> import torch
        >>> from rqcompile.ir import Builder, TensorType
        >>> b = Builder()
        >>> x = b.arg(TensorType((2,), "f32"))
        >>> b.ret(b.op("rq.add", x, b.const("bias", torch.zeros(2))))
        >>> const_params(b.module())
        ('bias',)
    """
    names = (str(op.attr("name")) for op in ir.func(func).ops if op.name == "rq.const")
    return tuple(dict.fromkeys(names))


def _check(f: Func) -> None:
    """Collect every problem (unsupported ops, dynamic dims), then raise once."""
    missing = sorted({op.name for op in f.ops if op.name not in EMITTERS and op.name != "rq.const"})
    if missing:
        raise UnsupportedOpError(
            f"the TVM emitter has no rule for: {', '.join(missing)}. Build with "
            "target='reference', or add an emitter to rqcompile.targets.tvm.emit.module.EMITTERS."
        )
    values = [*f.args, *(r for op in f.ops for r in op.results)]
    dynamic = [v for v in values if any(d is None for d in v.type.shape)]
    if dynamic:
        raise TargetError(
            f"TVM targets need static shapes; {len(dynamic)} value(s) have dynamic dims, e.g. "
            f"{dynamic[0].type}. Convert for concrete shapes: "
            "rq.lower(qat, target, example_inputs=(x,)), or lower with "
            "rq.lower(qat, target, dynamic_shapes=...), which builds each shape on first use."
        )


def _symbolic_chains(cx: Emission, f: Func) -> list[Any]:
    """The marked prologue chains the pattern still finds on the symbolic types (a chain it
    does not find runs as its ops)."""
    from rqcompile.passes.ir.patterns.prologue import find_prologues

    marks: dict[int, set[int]] = {}
    for i, op in enumerate(f.ops):
        mark = op.attr("rq.fused", None)
        if isinstance(mark, tuple) and len(mark) == 2 and mark[0] == "prologue":
            marks.setdefault(int(mark[1]), set()).add(i)
    if not marks:
        return []
    try:
        found = {c.ops: c for c in find_prologues(f, lambda q: True)}
    except Exception as e:  # the pattern needs static sizes: every chain as its ops
        cx.fallbacks.append(f"fused prologue_quantize -> its ops ({type(e).__name__})")
        return []
    out = []
    for _, ops in sorted(marks.items()):
        chain = found.get(frozenset(ops))
        if chain is None:
            cx.fallbacks.append("fused prologue_quantize -> its ops (not found on symbolic types)")
        else:
            out.append(chain)
    return out


def _emit_op(cx: Emission, op: Any, env: dict[int, Expr]) -> None:
    out = EMITTERS[op.name](cx, op, tuple(env[v.id] for v in op.operands))
    if len(op.results) == 1:
        env[op.result.id] = out
    else:
        for i, r in enumerate(op.results):
            env[r.id] = cx.emit(relax.TupleGetItem(out, i))


def _const(cx: Emission, op: Any, weight: Expr) -> Expr:
    """A constant's parameter; in a symbolic build, the leading block a shape-computed
    constant (``mask[:seq, :seq]``) takes at the call's dims."""
    dims = _dims(op.result.type)
    if all(isinstance(d, int) for d in dims):
        return weight
    axes = [a for a, d in enumerate(dims) if not isinstance(d, int)]
    # in bounds: every dim of the range is at most the maximum the constant was stored at
    ends = [dims[a] for a in axes]
    return cx.emit(relax.op.strided_slice(weight, axes, [0] * len(axes), ends,
                                          assume_inbound=True))  # fmt: skip


def emit_module(
    ir: Module,
    func: str = "main",
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    symbolic: Mapping[str, int] | None = None,
    report: list[str] | None = None,
) -> Any:
    """Translate ``ir``'s function ``func`` into a relax ``IRModule`` with function ``main``.

    ``main(*ir_args, *weights)``: the IR's arguments (named ``input0``, ...), then one
    parameter per name of :func:`const_params`. Returns a single tensor or a tuple, as the IR
    function does. Every lowering decision is read off the IR's annotations, which the
    target's IR passes recorded (``lowering.ir_passes``): each integer op's kernel-table row
    (``rq.kernel``) and weight layout (``rq.weight_layout``), and the fused attention groups
    and quantize prologues (``rq.fused``). Ops without annotations get the generic kernels.
    ``options`` (the old per-kernel dict, ``{"int_matmul": {"isa": "avx2"}, "attention":
    {"lanes": 8}}``) first runs the equivalent passes (``lowering.passes_for_options``).

    Raises:
        UnsupportedOpError: ops with no emitter (all listed at once).
        TargetError: dynamic shapes.
    """
    if options:
        ir = PassManager(passes_for_options(options)).run(ir, PassContext())
    f = ir.func(func)
    _check(f)
    inputs = [relax.Var(f"input{i}", _relax_type(v.type)) for i, v in enumerate(f.args)]
    weights: dict[str, Any] = {}
    for op in f.ops:
        if op.name == "rq.const":
            name = str(op.attr("name"))
            t = op.result.type
            if symbolic is not None:  # stored at the maxima; symbolic uses slice a prefix
                c = ir.constants[name]
                t = TensorType(tuple(c.shape), t.dtype)
            weights.setdefault(name, relax.Var(identifier(name), _relax_type(t)))
    cx = Emission(relax.BlockBuilder())
    cx.symbolic = symbolic is not None
    env: dict[int, Expr] = {v.id: x for v, x in zip(f.args, inputs, strict=True)}
    # symbolic: attention runs as its relax ops (its fused kernel unrolls static views);
    # a prologue chain is fused where its kernel takes the symbolic row count
    groups = [] if cx.symbolic else _attention_groups(ir, f)
    fused = {i for g in groups for i in g.ops}
    anchors = {g.anchor: g for g in groups}
    chains = _symbolic_chains(cx, f) if cx.symbolic else _prologue_chains(f)
    fused |= {i for c in chains for i in c.ops}
    chain_at = {c.anchor: c for c in chains}
    # num_input: the rest are weights, whose weight-only work LiftTransformParams may hoist
    fattrs: dict[str, Any] = {"num_input": len(inputs)}
    if symbolic:  # upper bounds: memory is planned once, for the largest shape
        fattrs["tir_var_upper_bound"] = {k: int(v) for k, v in symbolic.items()}
    with cx.bb.function("main", [*inputs, *weights.values()], attrs=fattrs):
        with cx.bb.dataflow():
            cx.uses = Uses(f)
            for i, op in enumerate(f.ops):
                if op.name == "rq.const":
                    env[op.result.id] = _const(cx, op, weights[str(op.attr("name"))])
                    continue
                group: Any = anchors.get(i) or chain_at.get(i)
                if group is not None:
                    try:
                        if i in anchors:
                            env[group.result.id] = _emit_attention(cx, group, env, f)
                        else:
                            _emit_prologue(cx, group, env)
                        continue
                    except Exception as e:  # symbolic: the ops one by one
                        if not cx.symbolic:
                            raise
                        kind = "attention" if i in anchors else "prologue_quantize"
                        cx.fallbacks.append(f"fused {kind} -> its ops ({type(e).__name__})")
                    for j in sorted(group.ops):
                        _emit_op(cx, f.ops[j], env)
                    continue
                if i in fused:
                    continue
                _emit_op(cx, op, env)
            outs = [env[v.id] for v in f.outputs]
            ret = cx.bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        cx.bb.emit_func_output(ret)
    if report is not None:
        report.extend(cx.fallbacks)
    return cx.bb.finalize()
