"""Printers for every form. All return strings; none print.

* ``inspect(graph_module)``: the rewritten graph, one node per line with quantization notes,
  then a per-layer table (params, weight bytes before/after, bits per element, MACs, energy).
* ``inspect(ir_module)``: the MLIR-style text of the integer IR.
* ``inspect(compiled)``: the compiled model's own summary (target, kernels, bytes).
* ``explain(model_or_graph, config, example_inputs=...)``: which rule chose each layer's spec.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from rqcompile.debug.table import format_table
from rqcompile.errors import UsageError
from rqcompile.quant.modules import RQQuantize

__all__ = ["inspect", "layer_table", "learned_bits"]


def _shape(n: fx.Node) -> str:
    tm = n.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        return ""
    dt = str(tm.dtype).replace("torch.", "").replace("float", "f").replace("int", "i")
    return f"{dt}[{', '.join(str(d) for d in tm.shape)}]"


def _arg(a: Any) -> str:
    if isinstance(a, fx.Node):
        return f"%{a.name}"
    if isinstance(a, (tuple, list)):
        inner = ", ".join(_arg(x) for x in a)
        return f"({inner})" if isinstance(a, tuple) else f"[{inner}]"
    return repr(a)


def _target(n: fx.Node) -> str:
    t = n.target
    if n.op == "call_function":
        mod = getattr(t, "__module__", "") or ""
        name = getattr(t, "__name__", str(t))
        if getattr(torch.nn.functional, name, None) is t or mod.startswith("torch.nn.functional"):
            return f"F.{name}"
        if mod in ("_operator", "operator"):
            return f"operator.{name}"
        return f"torch.{name}" if "torch" in mod or mod == "" else f"{mod}.{name}"
    if n.op == "call_method":
        return f".{t}"
    return str(t)


def _graph_lines(gm: fx.GraphModule) -> list[str]:
    lines = []
    for n in gm.graph.nodes:
        args = ", ".join(
            [_arg(a) for a in n.args] + [f"{k}={_arg(v)}" for k, v in n.kwargs.items()]
        )
        note = ""
        if n.op == "placeholder":
            body = f"%{n.name} = input"
        elif n.op == "get_attr":
            body = f"%{n.name} = self.{n.target}"
        elif n.op == "output":
            lines.append(f"return {_arg(n.args[0])}")
            continue
        elif n.op == "call_module":
            mod = gm.get_submodule(str(n.target))
            body = f"%{n.name} = self.{n.target}({args})"
            if isinstance(mod, RQQuantize):
                note = f"quantize → {mod.estimator} dequant: {mod.describe()}"
            else:
                note = type(mod).__name__
        elif n.op == "call_method":
            rest = [_arg(a) for a in n.args[1:]] + [f"{k}={_arg(v)}" for k, v in n.kwargs.items()]
            body = f"%{n.name} = {_arg(n.args[0])}.{n.target}({', '.join(rest)})"
        else:
            body = f"%{n.name} = {_target(n)}({args})"
        meta = n.meta.get("rq")
        if meta is not None and meta.role == "op":
            preset = meta.spec.preset or "custom"
            note = f"rq: {meta.layer} {preset} (kernel block {meta.block}, by {meta.created_by})"
        shape = _shape(n)
        tail = "  # " + "; ".join(x for x in (shape, note) if x) if (shape or note) else ""
        lines.append(body + tail)
    return lines


def learned_bits(gm: fx.GraphModule) -> dict[str, str]:
    """Layer key → ``"W 1.93→2 / A 2.10→2"`` for quantizers with a learned width (gdnsq)."""
    from rqcompile.quant.gdnsq import deployed_bits

    parts: dict[str, dict[str, str]] = {}
    for m in gm.modules():
        st = getattr(m, "estimator_state", None)
        if isinstance(m, RQQuantize) and st is not None and hasattr(st, "bits"):
            beta = float(st.bits().detach())
            tag = "W" if m.role == "weight" else "A"
            parts.setdefault(m.layer, {})[tag] = f"{tag} {beta:.2f}→{deployed_bits(beta)}"
    return {k: " / ".join(v[t] for t in ("W", "A") if t in v) for k, v in parts.items()}


def layer_table(gm: fx.GraphModule) -> str:
    """Per-layer costs of every matmul-like op: params, weight bytes, BPE, MACs, energy proxy.

    Float layers count 16-bit weights and 16×16-bit MACs, so the totals are model-level.
    """
    from rqcompile.debug.costs import matmul_costs, totals

    rows = matmul_costs(gm)
    table = [
        [
            r.layer,
            r.kind,
            "float" if r.spec is None else (r.spec.preset or "custom"),
            r.k,
            r.block or "-",
            r.params,
            r.bytes_fp32 / 1024,
            r.bytes_deployed / 1024,
            r.bpe,
            r.macs,
            r.energy,
        ]
        for r in rows
    ]
    header = [
        "layer",
        "kind",
        "format",
        "K",
        "block",
        "params",
        "fp32 KiB",
        "deployed KiB",
        "bits/elem",
        "MACs",
        "energy",
    ]
    learned = learned_bits(gm)
    if learned:  # gdnsq: learned widths and the integer widths convert deploys
        header.append("learned bits W/A")
        for row, r in zip(table, rows):
            row.append(learned.get(r.layer, "-"))
    text = format_table(header, table)
    t = totals(rows)
    if rows:
        nq = sum(r.spec is not None for r in rows)
        text += (
            f"\n{nq} of {len(rows)} matmul-like ops quantized; their weights "
            f"{t['bytes_fp32'] / 1024:.1f} KiB fp32 → {t['bytes_deployed'] / 1024:.1f} KiB deployed "
            f"({t['bytes_fp32'] / max(t['bytes_deployed'], 1):.1f}x smaller); energy proxy "
            f"{t['energy']:.3g} vs {t['energy_16bit']:.3g} units at 16x16 bits "
            f"({t['energy_16bit'] / max(t['energy'], 1):.1f}x lower)"
        )
    for key, why in gm.meta.get("rq_float_layers", {}).items():
        text += f"\nfloat: {key} ({why})"
    for note in gm.meta.get("rq_notes", []):
        text += f"\nnote: {note}"
    return text


def _shapes_note(gm: fx.GraphModule) -> str:
    """Where the input shapes ``convert`` will use come from."""
    traced = all("tensor_meta" in n.meta for n in gm.graph.nodes if n.op == "placeholder")
    seen = gm.meta.get("rq_input_shapes")
    if traced:
        return "input shapes: from the example inputs given to prepare"
    if seen:
        shapes = ", ".join(f"{list(s)} {str(d).removeprefix('torch.')}" for s, d in seen)
        return f"input shapes: {shapes} (recorded at the first forward; rq.lower uses them)"
    return ("input shapes: not recorded yet (prepare had no example inputs; the first forward "
            "records them, and MACs per layer are unknown until convert)")  # fmt: skip


def _inspect_graph(gm: fx.GraphModule) -> str:
    head = f"// {type(gm).__name__}: QAT graph" if gm.meta.get("rq_config") else "// fx graph"
    cfg = gm.meta.get("rq_config")
    parts = [head]
    if cfg is not None:
        parts.append("// config: " + str(cfg).replace("\n", "\n//   "))
        parts.append("// " + _shapes_note(gm))
    parts.extend(_graph_lines(gm))
    parts.append("")
    parts.append(layer_table(gm))
    return "\n".join(parts)


def inspect(obj: Any) -> str:
    """A readable text of any rqcompile form (QAT graph, IR module or compiled model).

    Example:
        >>> import torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(64, 32)), (torch.randn(2, 64),), "A4W4")
        >>> "quantize → ridge dequant" in rq.inspect(qat)
        True
    """
    if isinstance(obj, fx.GraphModule):
        return _inspect_graph(obj)
    if hasattr(obj, "inspect_text"):
        return str(obj.inspect_text())
    from rqcompile.ir.core import Module as IRModule

    if isinstance(obj, IRModule):
        from rqcompile.ir.printer import print_module

        return print_module(obj)
    if isinstance(obj, torch.nn.Module):
        raise UsageError(
            f"rq.inspect() takes a prepared graph, an IR module or a compiled model, not a plain "
            f"{type(obj).__name__}. Use rq.explain(model, config, example_inputs=...) to preview "
            f"what prepare() would do, or rq.prepare(model, example_inputs, config) first."
        )
    raise UsageError(f"rq.inspect() cannot show a {type(obj).__name__}.")
