"""Per-layer costs of a prepared graph over *every* matmul-like op, quantized or float.

Float layers (kept in float by the config: LM head, first conv, attention matmuls by default)
count at 16×16 bits and 16-bit weights, following the paper's energy proxy (docs/method.md#metrics), so
the model-level savings are not overstated.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from rqcompile.config.spec import LayerSpec
from rqcompile.metrics import FLOAT_BITS, bits_per_element, energy_units

__all__ = ["LayerCostRow", "matmul_costs", "model_costs", "totals"]


@dataclass(frozen=True)
class LayerCostRow:
    layer: str
    kind: str
    spec: LayerSpec | None  # None = float
    k: int
    block: int
    params: int
    macs: int
    bpe: float
    energy: float

    @property
    def bytes_fp32(self) -> float:
        return self.params * 4.0

    @property
    def bytes_deployed(self) -> float:
        return self.params * (4.0 if self.spec is None else self.bpe / 8)


def _shape(n: object) -> tuple[int, ...] | None:
    tm = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _float_row(layer: str, kind: str, params: int, macs: int, k: int) -> LayerCostRow:
    # float weights are stored as fp32 (32 bits/element); their MACs count at 16x16 bits
    return LayerCostRow(
        layer, kind, None, k, 0, params, macs, 32.0, float(FLOAT_BITS * FLOAT_BITS * macs)
    )


_aten = torch.ops.aten
#: Float matmul-like call_function targets (fx and torch.export forms).
_FLOAT_MATMULS = (
    torch.matmul,
    operator.matmul,
    torch.bmm,
    F.linear,
    _aten.linear.default,
    _aten.matmul.default,
    _aten.bmm.default,
    _aten.mm.default,
    _aten.addmm.default,
)


def matmul_costs(gm: fx.GraphModule) -> list[LayerCostRow]:
    """One row per matmul-like node (quantized first-class, float ones at 16 bits)."""
    from rqcompile.quant.modules import RQQuantize

    rows: list[LayerCostRow] = []
    for n in gm.graph.nodes:
        meta = n.meta.get("rq")
        out = _shape(n)
        if meta is not None and meta.role == "op":
            params, block = 0, meta.block
            if meta.kind != "matmul":
                wq = gm.get_submodule(str(n.args[1].target))
                src = n.args[1].args[0]
                src = src.args[0] if src.op == "call_function" else src  # t(W): (K, N) storage
                params = int(gm.get_parameter(str(src.target)).numel())
                block = wq.block if isinstance(wq, RQQuantize) else block
            rows.append(
                LayerCostRow(
                    meta.layer,
                    meta.kind,
                    meta.spec,
                    meta.k,
                    block,
                    params,
                    meta.macs,
                    bits_per_element(meta.spec, block),
                    energy_units(meta.spec, meta.macs),
                )
            )
        elif out is not None and n.op == "call_module":
            m = gm.get_submodule(str(n.target))
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                k = m.in_features if isinstance(m, nn.Linear) else m.weight[0].numel()
                rows.append(
                    _float_row(
                        str(n.target),
                        type(m).__name__.lower(),
                        m.weight.numel(),
                        math.prod(out) * k,
                        k,
                    )
                )
        elif out is not None and n.op == "call_function" and n.target in _FLOAT_MATMULS:
            a = _shape(n.args[1] if n.target == _aten.addmm.default else n.args[0])
            if a is None:
                continue
            k = a[-1]
            params = 0
            w = n.args[2] if n.target == _aten.addmm.default else n.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                params = int(gm.get_parameter(str(w.target)).numel())
            from rqcompile.capture.trace import owner_of

            owner = owner_of(n)
            key = f"{owner}:{n.name}" if owner else n.name
            rows.append(_float_row(key, "matmul", params, math.prod(out) * k, k))
    return rows


def totals(rows: list[LayerCostRow]) -> dict[str, float]:
    """Model totals: bytes (fp32 / deployed) and energy (deployed / all-16-bit)."""
    return {
        "bytes_fp32": sum(r.bytes_fp32 for r in rows),
        "bytes_deployed": sum(r.bytes_deployed for r in rows),
        "energy": sum(r.energy for r in rows),
        "energy_16bit": float(sum(FLOAT_BITS * FLOAT_BITS * r.macs for r in rows)),
    }


def model_costs(model: nn.Module) -> tuple[float, float]:
    """(deployed weight KiB of the whole model, energy saving of its matmuls vs 16×16 bits).

    Parameters outside matmul-like layers (embeddings, norms, biases) count at fp32. A plain
    (unprepared) model reports its fp32 size and a saving of 1.
    """
    total_fp32 = sum(p.numel() * 4.0 for p in model.parameters())
    if not isinstance(model, fx.GraphModule) or "rq_config" not in model.meta:
        return total_fp32 / 1024, 1.0
    rows = matmul_costs(model)
    t = totals(rows)
    other = total_fp32 - sum(r.bytes_fp32 for r in rows)
    return (other + t["bytes_deployed"]) / 1024, t["energy_16bit"] / max(t["energy"], 1.0)
