"""quantize-attention: quantize both operands of activation × activation matmuls.

Runs only when ``QConfig.quantize_attention`` is true (docs/method.md#which-format-goes-where: presets leave QKᵀ and
attention·V in float). Both operands use the layer's *activation* spec; blocks run along the
contraction dimension (last dim of the left operand, dim -2 of the right one).

Before::

    %matmul = call_function[torch.matmul](%q, %k_t)

After::

    %attn_matmul_lhs_quant = call_module[attn.matmul_lhs_quant](%q)
    %attn_matmul_rhs_quant = call_module[attn.matmul_rhs_quant](%k_t)
    %matmul = call_function[torch.matmul](%attn_matmul_lhs_quant, %attn_matmul_rhs_quant)

Requires: quantize-layers has run (weight layers are no longer plain matmuls of activations).
Guarantees: each rewritten matmul carries ``node.meta["rq"]`` with kind ``matmul``.
Numerics: fake quantization of both operands.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from rqcompile.capture.trace import owner_of, source_of
from rqcompile.passes.infra import PassContext, PassResult, register_pass
from rqcompile.passes.qat.common import RQNodeMeta, add_quantizer, resolve_block, shape_of

__all__ = ["MATMULS", "QuantizeAttention"]

#: Functions treated as activation × activation matmuls (fx and torch.export/ATen forms).
MATMULS = (
    torch.matmul,
    operator.matmul,
    torch.bmm,
    torch.ops.aten.matmul.default,
    torch.ops.aten.bmm.default,
)


def _is_activation(n: object) -> bool:
    return isinstance(n, fx.Node) and n.op not in ("get_attr",)


@register_pass
@dataclass(frozen=True)
class QuantizeAttention:
    """quantize-attention: act×act matmul → quantize both sides → matmul."""

    name: ClassVar[str] = "quantize-attention"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult[fx.GraphModule]:
        cfg = ctx.config
        changed = False
        for n in list(gm.graph.nodes):
            if n.op != "call_function" or n.target not in MATMULS or "rq" in n.meta:
                continue
            a, b = n.args[0], n.args[1]
            if not (_is_activation(a) and _is_activation(b)):
                continue
            owner = owner_of(n)
            key = f"{owner}:{n.name}" if owner else n.name
            ctx.options.setdefault("layer_keys", []).append(key)
            spec, _ = cfg.resolve(key)
            if not cfg.quantize_attention or spec is None or spec.activation is None:
                reason = (
                    "attention matmul (QConfig.quantize_attention=False)"
                    if not cfg.quantize_attention
                    else "kept in float by the config"
                )
                ctx.options.setdefault("float_layers", {})[key] = reason
                continue
            if "tensor_meta" not in a.meta:
                from rqcompile.errors import ConfigError

                raise ConfigError(
                    f"quantize_attention=True: the block size of {key!r} depends on an "
                    "activation shape, and prepare() was given no example inputs. Fix: "
                    "rq.prepare(model, (x,), config, quantize_attention=True) with a batch x."
                )
            k = shape_of(a)[-1]
            block = resolve_block(spec.activation, k, layer=key, role="activation")
            src = source_of(n)
            g = gm.graph
            with g.inserting_before(n):
                qa = add_quantizer(
                    gm,
                    owner,
                    f"{n.name}_lhs_quant",
                    spec,
                    spec.activation,
                    role="activation",
                    layout="last",
                    block=block,
                    layer=key,
                )
                qb = add_quantizer(
                    gm,
                    owner,
                    f"{n.name}_rhs_quant",
                    spec,
                    spec.activation,
                    role="activation",
                    layout="rows",
                    block=block,
                    layer=key,
                )
                na = g.call_module(qa, (a,))
                nb = g.call_module(qb, (b,))
            for q in (na, nb):
                q.meta["rq"] = RQNodeMeta(key, "matmul", "activation", spec, self.name, src)
            n.args = (na, nb, *n.args[2:])
            macs = int(torch.tensor(shape_of(n)).prod()) * k
            n.meta["rq"] = RQNodeMeta(key, "matmul", "op", spec, self.name, src, macs, k, block)
            changed = True
        gm.recompile()
        return PassResult(gm, changed)
