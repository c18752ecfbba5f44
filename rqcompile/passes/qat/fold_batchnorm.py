"""fold-batchnorm: fold a BatchNorm that follows a conv into the conv's weight and bias.

Runs first in ``prepare`` when ``rq.prepare(..., fold_batchnorm=True)`` (it is not in the
default pipeline: a model trained from scratch usually wants batch statistics).
Folding before quantization means the weight quantizer sees (and training updates) the weight
that is actually deployed, and the integer kernel needs no per-channel affine after it.

Before::

    %conv = call_module[conv](%x)              # or aten.conv2d(%x, %conv_weight, None, ...)
    %bn   = call_module[bn](%conv)             # or aten.batch_norm(%conv, ..., training=False)

After::

    %conv = call_module[conv](%x)   # conv.weight ← W·γ/√(σ²+ε); conv.bias ← (b−μ)·γ/√(σ²+ε)+β

Requires: the BatchNorm is the conv's only user, uses running statistics (eval-mode
``aten.batch_norm`` or an ``nn.BatchNorm2d`` with ``track_running_stats``), and the conv's
weight is a parameter. Other BatchNorms are left alone (and stay float ops).
Guarantees: the BatchNorm's parameters and buffers are removed from the graph module, the
conv gets a ``bias`` parameter if it had none (so ``state_dict`` keys change: see
docs/models.md); each fold is a ``note:`` line of ``rq.inspect``.
Numerics: equal to conv followed by eval-mode BatchNorm up to float rounding (≈1e-6 relative);
training the result trains the folded weight (batch statistics are no longer used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import fx, nn

from rqcompile.capture.trace import owner_of
from rqcompile.passes.infra import PassContext, PassResult, register_pass

__all__ = ["FoldBatchNorm"]

_aten = torch.ops.aten


@dataclass(frozen=True)
class _Match:
    conv: fx.Node
    bn: fx.Node
    weight: str  # conv weight parameter name
    bias: str | None
    bn_names: dict[str, str | None]  # weight/bias/mean/var → qualified names
    eps: float


def _attr(n: Any) -> str | None:
    return str(n.target) if isinstance(n, fx.Node) and n.op == "get_attr" else None


def _match_module(gm: fx.GraphModule, bn: fx.Node) -> _Match | None:
    m = gm.get_submodule(str(bn.target))
    conv = bn.args[0]
    if not (isinstance(m, nn.BatchNorm2d) and m.track_running_stats and isinstance(conv, fx.Node)):
        return None
    if conv.op != "call_module" or not isinstance(gm.get_submodule(str(conv.target)), nn.Conv2d):
        return None
    c, b = str(conv.target), str(bn.target)
    names = (
        {k: f"{b}.{k}" for k in ("weight", "bias")}
        if m.affine
        else dict.fromkeys(("weight", "bias"))
    )
    names |= {"mean": f"{b}.running_mean", "var": f"{b}.running_var"}
    has_bias = gm.get_submodule(c).bias is not None
    return _Match(conv, bn, f"{c}.weight", f"{c}.bias" if has_bias else None, names, m.eps)


def _match_aten(gm: fx.GraphModule, bn: fx.Node) -> _Match | None:
    args = list(bn.args) + [None] * (9 - len(bn.args))
    conv, w, b, mean, var, training, _, eps, _ = args
    if training or not isinstance(conv, fx.Node) or conv.target != _aten.conv2d.default:
        return None
    cw = _attr(conv.args[1])
    cb = _attr(conv.args[2]) if len(conv.args) > 2 and conv.args[2] is not None else None
    if cw is None or _attr(mean) is None or _attr(var) is None:
        return None
    names = {"weight": _attr(w), "bias": _attr(b), "mean": _attr(mean), "var": _attr(var)}
    return _Match(conv, bn, cw, cb, names, float(eps if eps is not None else 1e-5))


def _get(gm: fx.GraphModule, name: str | None) -> torch.Tensor | None:
    if name is None:
        return None
    obj: Any = gm
    for p in name.split("."):
        obj = getattr(obj, p)
    return obj  # type: ignore[no-any-return]


def _delete(gm: fx.GraphModule, name: str) -> None:
    owner, _, leaf = name.rpartition(".")
    mod = gm.get_submodule(owner) if owner else gm
    for table in (mod._parameters, mod._buffers):
        table.pop(leaf, None)
    if hasattr(mod, leaf) and leaf in mod.__dict__:
        delattr(mod, leaf)


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm:
    """fold-batchnorm: conv → BatchNorm(eval statistics) becomes one conv."""

    name: ClassVar[str] = "fold-batchnorm"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult[fx.GraphModule]:
        folded: list[str] = []
        for n in list(gm.graph.nodes):
            match = None
            if n.op == "call_module":
                match = _match_module(gm, n)
            elif n.op == "call_function" and n.target == _aten.batch_norm.default:
                match = _match_aten(gm, n)
            if match is None or len(match.conv.users) != 1:
                continue
            bn_key = str(n.target) if n.op == "call_module" else owner_of(n) or n.name
            conv_key = match.weight.rpartition(".")[0]
            self._fold(gm, match)
            if n.op == "call_module":
                gm.delete_submodule(bn_key)
            folded.append(f"{bn_key} folded into {conv_key}")
        if folded:
            gm.graph.eliminate_dead_code()
            gm.recompile()
        ctx.options.setdefault("notes", []).extend(
            f"{f} (running statistics; fold-batchnorm)" for f in folded
        )
        return PassResult(gm, bool(folded))

    def _fold(self, gm: fx.GraphModule, m: _Match) -> None:
        w = gm.get_parameter(m.weight)
        mean, var = _get(gm, m.bn_names["mean"]), _get(gm, m.bn_names["var"])
        assert mean is not None and var is not None  # matched on get_attr / running stats
        gamma = _get(gm, m.bn_names["weight"])
        beta = _get(gm, m.bn_names["bias"])
        with torch.no_grad():
            scale = (torch.ones_like(var) if gamma is None else gamma) / torch.sqrt(var + m.eps)
            bias0 = _get(gm, m.bias) if m.bias else torch.zeros_like(mean)
            new_bias = (bias0 - mean) * scale + (torch.zeros_like(mean) if beta is None else beta)
            w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))))
        conv_owner = m.weight.rpartition(".")[0]
        owner = gm.get_submodule(conv_owner) if conv_owner else gm
        if m.bias:
            gm.get_parameter(m.bias).data.copy_(new_bias)
        else:
            owner.register_parameter("bias", nn.Parameter(new_bias.detach().clone()))
            if m.conv.op == "call_function":  # aten.conv2d: pass the new bias explicitly
                with gm.graph.inserting_before(m.conv):
                    bnode = gm.graph.get_attr(f"{conv_owner}.bias" if conv_owner else "bias")
                args = list(m.conv.args) + [None] * (3 - len(m.conv.args))
                args[2] = bnode
                m.conv.args = tuple(args)
        m.bn.replace_all_uses_with(m.conv)
        reads = [a for a in m.bn.args if isinstance(a, fx.Node) and a.op == "get_attr"]
        gm.graph.erase_node(m.bn)
        for r in reads:  # aten: drop the BatchNorm's tensors and their now-dead reads
            if not r.users:
                gm.graph.erase_node(r)
                _delete(gm, str(r.target))
        if m.bn.op == "call_function" and m.bn_names["mean"]:  # its step counter, if registered
            _delete(gm, m.bn_names["mean"].rpartition(".")[0] + ".num_batches_tracked")
