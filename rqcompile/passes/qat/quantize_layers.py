"""quantize-layers: rewrite every weight layer into quantize → ridge-dequant → matmul.

Before::

    %fc1 = call_module[fc1](%x)                                  # nn.Linear

After::

    %fc1_input_quant  = call_module[fc1.input_quant](%x)         # A 4b affine block=128 ridge
    %fc1_weight       = get_attr[fc1.weight]
    %fc1_weight_quant = call_module[fc1.weight_quant](%fc1_weight)   # W 4b affine block=128
    %fc1_bias         = get_attr[fc1.bias]
    %linear           = call_function[F.linear](%fc1_input_quant, %fc1_weight_quant, %fc1_bias)

Handles ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d`` (grouped and depthwise too) and
``F.linear`` whose weight is a parameter; on graphs captured with ``torch.export`` the ATen
forms ``aten.linear``, ``aten.conv1d``/``aten.conv2d``, and ``aten.addmm``/``aten.mm``/
``aten.matmul`` (and fx ``x @ W``) with a parameter ``(K, N)`` right operand (HF ``Conv1D``). The
latter are rewritten to ``F.linear`` on the transposed weight (``weight_quant(t(W))``), so the
trained parameter keeps its key and layout. An ATen layer whose weight is ``<module>.weight``
is keyed by the module name, exactly as with fx capture. Rules live in :data:`RULES`, keyed
by module type or function. The bias stays in float. The original module stays in the graph
module (it owns the parameters), so ``state_dict`` keys are unchanged and a float checkpoint
loads directly.

Requires: a captured graph with ``tensor_meta`` (``capture`` records it).
Guarantees: every rewritten op node carries ``node.meta["rq"]`` (RQNodeMeta, role "op").
Numerics: training-time fake quantization; exactly ``RQQuantize`` on each operand.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from rqcompile.capture.trace import owner_of, source_of
from rqcompile.config.fallback import rewrite_with_fallback
from rqcompile.config.spec import LayerSpec
from rqcompile.passes.infra import PassContext, PassResult, register_pass
from rqcompile.passes.qat.common import (
    RQNodeMeta,
    add_quantizer,
    check_finite,
    conv_weight_block,
    kernel_block,
    resolve_block,
    shape_of,
)

__all__ = ["RULES", "QuantizeLayers"]


@dataclass(frozen=True)
class _Layer:
    """What a rule extracts from a node: enough to build the quantized pattern."""

    key: str
    owner: str  # module that will own the quantizers
    kind: str  # linear | conv
    x: fx.Node
    weight: str  # qualified parameter name
    bias: str | None
    fn: Callable[..., torch.Tensor]
    extra: tuple[Any, ...] = ()  # stride, padding, dilation, groups for convs
    skip_reason: str | None = None
    transposed: bool = False  # parameter stored (K, N): quantize t(W)


def _module_linear(gm: fx.GraphModule, n: fx.Node) -> _Layer:
    m = gm.get_submodule(str(n.target))
    key = str(n.target)
    return _Layer(
        key,
        key,
        "linear",
        n.args[0],
        f"{key}.weight",  # type: ignore[arg-type]
        f"{key}.bias" if m.bias is not None else None,
        F.linear,
    )


def _module_conv(gm: fx.GraphModule, n: fx.Node) -> _Layer:
    m = gm.get_submodule(str(n.target))
    key = str(n.target)
    fn = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    skip = None
    if m.padding_mode != "zeros":
        skip = f"padding_mode={m.padding_mode!r} (only 'zeros' is quantized)"
    return _Layer(
        key,
        key,
        "conv",
        n.args[0],
        f"{key}.weight",  # type: ignore[arg-type]
        f"{key}.bias" if m.bias is not None else None,
        fn,
        (m.stride, m.padding, m.dilation, m.groups),
        skip,
    )


def _functional_linear(gm: fx.GraphModule, n: fx.Node) -> _Layer | None:
    args = list(n.args) + [n.kwargs.get("bias")] * (3 - len(n.args))
    x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
    if not (isinstance(w, fx.Node) and w.op == "get_attr"):
        return None  # weight computed at run time: not a weight layer
    if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr"):
        return None
    owner = owner_of(n)
    return _Layer(
        f"{owner}:{n.name}" if owner else n.name,
        owner,
        "linear",
        x,
        str(w.target),  # type: ignore[arg-type]
        None if b is None else str(b.target),
        F.linear,
    )


def _param(gm: fx.GraphModule, n: Any) -> str | None:
    """Qualified name of the ``nn.Parameter`` read by ``n`` (a ``get_attr`` node), else None."""
    if not (isinstance(n, fx.Node) and n.op == "get_attr"):
        return None
    try:
        gm.get_parameter(str(n.target))
    except AttributeError:
        return None  # a buffer or constant: not a trainable weight
    return str(n.target)


def _aten_key(n: fx.Node, weight: str) -> tuple[str, str]:
    """(layer key, owner): the module name when the weight is ``<owner>.weight``."""
    owner = owner_of(n)
    if owner and weight == f"{owner}.weight":
        return owner, owner
    owner = owner if owner else weight.rpartition(".")[0]
    return (f"{owner}:{n.name}" if owner else n.name), owner


def _aten_linear(gm: fx.GraphModule, n: fx.Node) -> _Layer | None:
    x, w = n.args[0], _param(gm, n.args[1])
    b = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
    if w is None or (b is not None and _param(gm, b) is None):
        return None
    key, owner = _aten_key(n, w)
    return _Layer(key, owner, "linear", x, w, _param(gm, b), F.linear)  # type: ignore[arg-type]


def _aten_conv(gm: fx.GraphModule, n: fx.Node) -> _Layer | None:
    args = list(n.args) + [None] * (7 - len(n.args))
    x, w, b, stride, padding, dilation, groups = args
    w = _param(gm, w)
    if w is None or (b is not None and _param(gm, b) is None) or isinstance(padding, str):
        return None
    key, owner = _aten_key(n, w)
    one_d = n.target == torch.ops.aten.conv1d.default
    extra = (stride or 1, padding or 0, dilation or 1, groups or 1)
    return _Layer(key, owner, "conv", x, w, _param(gm, b), F.conv1d if one_d else F.conv2d, extra)  # type: ignore[arg-type]


def _transposed_linear(x: Any, w: Any, b: Any, gm: fx.GraphModule, n: fx.Node) -> _Layer | None:
    """``x @ W (+ b)`` with a 2-D parameter ``W`` of shape (K, N)."""
    wname = _param(gm, w)
    if wname is None or gm.get_parameter(wname).dim() != 2:
        return None
    if b is not None and _param(gm, b) is None:
        return None
    key, owner = _aten_key(n, wname)
    return _Layer(key, owner, "linear", x, wname, _param(gm, b), F.linear, transposed=True)


def _aten_addmm(gm: fx.GraphModule, n: fx.Node) -> _Layer | None:
    if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
        return None
    b, x, w = n.args[:3]
    return _transposed_linear(x, w, b, gm, n)


def _aten_mm(gm: fx.GraphModule, n: fx.Node) -> _Layer | None:
    return _transposed_linear(n.args[0], n.args[1], None, gm, n)


_aten = torch.ops.aten

#: Rewrite rules: call_module targets by type, call_function targets by identity.
RULES: dict[Any, Callable[[fx.GraphModule, fx.Node], _Layer | None]] = {
    nn.Linear: _module_linear,
    nn.Conv1d: _module_conv,
    nn.Conv2d: _module_conv,
    F.linear: _functional_linear,
    _aten.linear.default: _aten_linear,
    _aten.conv1d.default: _aten_conv,
    _aten.conv2d.default: _aten_conv,
    _aten.addmm.default: _aten_addmm,
    _aten.mm.default: _aten_mm,
    _aten.matmul.default: _aten_mm,
    torch.matmul: _aten_mm,  # fx: ``x @ self.W`` with a 2-D parameter W
    operator.matmul: _aten_mm,
}


def _rule_for(gm: fx.GraphModule, n: fx.Node) -> Callable[..., _Layer | None] | None:
    if n.op == "call_module":
        return RULES.get(type(gm.get_submodule(str(n.target))))
    if n.op == "call_function":
        return RULES.get(n.target)
    return None


def _tied_notes(gm: fx.GraphModule, layers: list[_Layer]) -> list[str]:
    """A line per quantized weight that another op also reads in float (tied embedding and
    LM head): that op keeps using the float tensor, which is the same trained parameter."""
    names: dict[int, list[str]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    notes = []
    for layer in layers:
        aliases = set(names.get(id(gm.get_parameter(layer.weight)), [layer.weight]))
        readers = sorted(
            {
                owner_of(u) or u.name
                for n in gm.graph.nodes
                if n.op == "get_attr" and str(n.target) in aliases
                for u in n.users
                if not (u.op == "call_module" or u.target is torch.t)
            }
        )
        if readers:
            notes.append(
                f"{layer.key}: weight {layer.weight} is tied to {', '.join(readers)}, which reads "
                "it in float (e.g. the embedding lookup); only this matmul uses the quantized copy"
            )
    return notes


@register_pass
@dataclass(frozen=True)
class QuantizeLayers:
    """quantize-layers: Linear / Conv / F.linear → quantize → ridge-dequant → matmul."""

    name: ClassVar[str] = "quantize-layers"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult[fx.GraphModule]:
        changed = False
        done: list[_Layer] = []
        for n in list(gm.graph.nodes):
            rule = _rule_for(gm, n)
            layer = rule(gm, n) if rule else None
            if layer is None:
                continue
            ctx.options.setdefault("layer_keys", []).append(layer.key)
            spec, _ = ctx.config.resolve(layer.key)
            report = ctx.options.setdefault("float_layers", {})
            if spec is None:
                report[layer.key] = "kept in float by the config"
                continue
            if layer.skip_reason:
                report[layer.key] = layer.skip_reason
                continue
            spec = rewrite_with_fallback(self._rewrite, gm, n, layer, spec, ctx)  # config/fallback
            if spec is None:  # kept in float (recorded in float_layers)
                continue
            done.append(layer)
            changed = True
        ctx.options.setdefault("notes", []).extend(_tied_notes(gm, done))
        gm.recompile()
        return PassResult(gm, changed)

    def _rewrite(self, gm: fx.GraphModule, n: fx.Node, layer: _Layer, spec: LayerSpec) -> None:
        w = gm.get_parameter(layer.weight)
        w = w.t() if layer.transposed else w
        check_finite(w.detach(), layer=layer.key, what="the weight")
        wshape = tuple(w.shape)
        if layer.kind == "conv":
            cpg, taps = wshape[1], int(torch.tensor(wshape[2:]).prod())
            k = cpg * taps
            wblock = conv_weight_block(spec.weight, cpg, taps, layer=layer.key)
            wlayout, alayout = "conv_weight", "channels"
            groups = layer.extra[-1] if layer.extra and isinstance(layer.extra[-1], int) else 1
            # input channels: from the recorded shape, else the weight (prepare without inputs)
            ak = shape_of(layer.x)[1] if "tensor_meta" in layer.x.meta else cpg * groups
        else:
            k = wshape[1]
            wblock = resolve_block(spec.weight, k, layer=layer.key, role="weight")
            wlayout, alayout, ak = "last", "last", k
        if spec.sparsity is not None and wblock % spec.sparsity.m:
            from rqcompile.errors import FormatError

            raise FormatError(
                f"layer {layer.key!r}: {spec.sparsity} sparsity needs the weight block "
                f"({wblock}) to be a multiple of {spec.sparsity.m}. Keep this layer dense "
                f"(overrides={{{layer.key!r}: <the format without +{spec.sparsity}>}}) or in float "
                f"(overrides={{{layer.key!r}: None}}); without strict=True a preset does this "
                "itself (config/fallback.py)."
            )
        g = gm.graph
        src = source_of(n)
        with g.inserting_before(n):
            x = layer.x
            ablock = 0
            if spec.activation is not None:
                ablock = resolve_block(spec.activation, ak, layer=layer.key, role="activation")
                qa = add_quantizer(
                    gm,
                    layer.owner,
                    "input_quant",
                    spec,
                    spec.activation,
                    role="activation",
                    layout=alayout,
                    block=ablock,
                    layer=layer.key,
                )
                x = g.call_module(qa, (x,))
                x.meta["rq"] = RQNodeMeta(layer.key, layer.kind, "activation", spec, self.name, src)
            wnode = g.get_attr(layer.weight)
            if layer.transposed:  # (K, N) storage: quantize the (N, K) view, keep the parameter
                wnode = g.call_function(torch.t, (wnode,))
            qw = add_quantizer(
                gm,
                layer.owner,
                "weight_quant",
                spec,
                spec.weight,
                role="weight",
                layout=wlayout,
                block=wblock,
                layer=layer.key,
            )
            wq = g.call_module(qw, (wnode,))
            wq.meta["rq"] = RQNodeMeta(layer.key, layer.kind, "weight", spec, self.name, src)
            b = g.get_attr(layer.bias) if layer.bias else None
            new = g.call_function(layer.fn, (x, wq, b, *layer.extra))
        # MACs need the output shape: unknown (0) until shapes are recorded
        macs = int(torch.tensor(shape_of(n)).prod()) * k if "tensor_meta" in n.meta else 0
        new.meta.update(n.meta)
        block = kernel_block(wblock, ablock) if ablock else wblock
        new.meta["rq"] = RQNodeMeta(
            layer.key, layer.kind, "op", spec, self.name, src, macs, k, block
        )
        n.replace_all_uses_with(new)
        g.erase_node(n)
