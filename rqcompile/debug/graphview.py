"""A drawable view of any rqcompile form: nodes with short labels and quantization notes.

``rq.draw`` renders a :class:`GraphView`; building one is separate so that the content (what
a node says) is testable without graphviz or matplotlib.

* QAT graph (``rq.prepare``): quantizer nodes show role, bits, symmetry, block, estimator,
  λ and N:M sparsity; rewritten matmuls show the layer, preset and kernel block. Weight reads
  are folded into their quantizer, and shape plumbing (``size``), ``Dropout`` and
  ``contiguous`` are left out (edges pass through them).
* IR module (``rq.convert``): one node per op; ``rq.const`` operands are folded into their
  user as a ``weights:`` line; kernel ops name the kernel that ``convert`` chose.
* Compiled model: its IR, titled with the target.

Repeated blocks (``blocks.1`` built like ``blocks.0``) collapse to one node each
(:func:`collapse_repeats`), and :func:`diff_views` marks nodes added or removed between two
views (fx nodes match by name; IR ops by name, layer and occurrence).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["GraphView", "VNode", "collapse_repeats", "diff_views", "view_of"]

#: node kinds, each with its own fill colour in the renderers
KINDS = ("input", "output", "quant", "qop", "fop", "op", "collapsed")


@dataclass(frozen=True)
class VNode:
    id: str
    lines: tuple[str, ...]
    kind: str = "op"
    group: str = ""  # e.g. "blocks.0" (a repeated block), "" when top level
    status: str = ""  # "", "added", "removed" or "changed" (diff views)


@dataclass
class GraphView:
    title: str
    legend: str = (
        "blue: quantize → ridge dequant · orange: quantized matmul · grey: matmul kept in "
        "float · purple: repeated block"
    )
    nodes: dict[str, VNode] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def add(self, node: VNode) -> None:
        self.nodes[node.id] = node

    def connect(self, src: str, dst: str) -> None:
        if src in self.nodes and dst in self.nodes and (src, dst) not in self.edges:
            self.edges.append((src, dst))


_GROUP = re.compile(r"^(.*?\.\d+)(?:[.:]|$)")


def group_of(name: str) -> str:
    """``blocks.0.attn.c_attn`` → ``blocks.0`` (the first indexed container); else ``""``."""
    m = _GROUP.match(name)
    return m.group(1) if m else ""


def _dims(shape: Iterable[int]) -> str:
    return "×".join(str(d) for d in shape)


def _fmt_lambda(v: float) -> str:
    return f"{v:g}"


# ---------------------------------------------------------------- fx graphs


def _quant_lines(mod: Any, weight_shape: tuple[int, ...] | None) -> tuple[str, ...]:
    role = "W" if mod.role == "weight" else "A"
    spec = mod.spec
    head = f"{role} quant: " + re.sub(r" block=\S+", "", spec.short())
    if mod.sparsity is not None:
        head += f" · {mod.sparsity.n}:{mod.sparsity.m}"
    est = mod.estimator + (
        f" λ={_fmt_lambda(mod.ridge_lambda)}" if mod.estimator == "ridge" else ""
    )
    tail = f"block {mod.block or 'per-channel'} · {est}"
    lines = [head, tail]
    if weight_shape:
        lines.append(f"{mod.layer}.weight {_dims(weight_shape)}")
    return tuple(lines)


def _fx_short(n: Any, gm: Any) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(str(n.target))).__name__
    if n.op == "call_method":
        return f".{n.target}"
    return getattr(n.target, "__name__", str(n.target)).strip("_")


def _fx_view(gm: Any, title: str) -> GraphView:
    from torch import fx, nn

    from rqcompile.capture.trace import owner_of
    from rqcompile.debug.format import _shape
    from rqcompile.quant.modules import RQQuantize

    view = GraphView(title)
    alias: dict[str, str] = {}  # dropped node → the node its users should connect to
    folded: set[str] = set()

    def is_dropped(n: fx.Node) -> bool:
        if n.op == "call_method" and n.target in ("size", "contiguous", "dim"):
            return True
        if n.op == "call_module":
            return isinstance(gm.get_submodule(str(n.target)), nn.Dropout | nn.Identity)
        return False

    def folds(n: fx.Node) -> bool:  # a weight/bias read shown inside its only kind of user
        return (
            n.op == "get_attr"
            and bool(n.users)
            and all(
                (u.op == "call_module" and isinstance(gm.get_submodule(str(u.target)), RQQuantize))
                or (u.meta.get("rq") is not None and u.meta["rq"].role == "op")
                for u in n.users
            )
        )

    for n in gm.graph.nodes:
        if folds(n):
            folded.add(n.name)
            continue
        if n.op == "call_method" and n.target in ("size", "dim"):
            folded.add(n.name)  # shape plumbing: no data edge
            continue
        if is_dropped(n):
            src = next((a for a in n.all_input_nodes), None)
            if src is not None:
                alias[n.name] = alias.get(src.name, src.name)
            continue
        meta = n.meta.get("rq")
        shape = _shape(n)
        if n.op == "placeholder":
            node = VNode(n.name, (f"input {n.name}", shape), "input")
        elif n.op == "output":
            node = VNode(n.name, ("output",), "output")
        elif n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), RQQuantize):
            mod = gm.get_submodule(str(n.target))
            w = next((a for a in n.all_input_nodes if a.name in folded), None)
            wshape = None
            if w is not None:
                t = gm
                for part in str(w.target).split("."):
                    t = getattr(t, part)
                wshape = tuple(t.shape)
            node = VNode(n.name, _quant_lines(mod, wshape), "quant", group_of(mod.layer))
        elif meta is not None and meta.role == "op":
            preset = meta.spec.preset or "custom"
            lines = (f"{_fx_short(n, gm)} {meta.layer}", f"{preset} · kernel block {meta.block}")
            if any(a.name in folded and str(a.target).endswith("bias") for a in n.all_input_nodes):
                lines = (*lines, "+ float bias")
            node = VNode(n.name, (*lines, shape), "qop", group_of(meta.layer))
        else:
            name = str(n.target) if n.op in ("call_module", "get_attr") else owner_of(n)
            short = _fx_short(n, gm) if n.op != "get_attr" else "param"
            label = (f"{short} {name}" if n.op in ("call_module", "get_attr") else short, shape)
            kind = "fop" if short in ("matmul", "linear", "bmm", "conv2d", "Linear") else "op"
            node = VNode(n.name, label, kind, group_of(name))
        view.add(replace(node, lines=tuple(x for x in node.lines if x)))
        for a in n.all_input_nodes:
            if a.name not in folded:
                view.connect(alias.get(a.name, a.name), n.name)
    return view


# ---------------------------------------------------------------- rq IR


_KERNEL_OPS = ("matmul", "qbmm", "conv2d", "linear")
_SHOWN_ATTRS = ("bits", "block", "k", "estimator", "ridge_lambda", "pack", "n", "m", "symmetric")


def _attr_line(op: Any) -> str:
    d = op.attrs_dict
    if op.name == "rq.quantize":
        kind = "linear" if d.get("symmetric") else "affine"
        lam = f" λ={_fmt_lambda(d['ridge_lambda'])}" if d.get("estimator") == "ridge" else ""
        return (
            f"{d.get('bits')}b {kind} · block {d.get('block')} · {d.get('estimator')}{lam}"
            f" · pack {d.get('pack')}"
        )
    parts = []
    for k in _SHOWN_ATTRS:
        if k in d:
            v = d[k]
            k = "λ" if k == "ridge_lambda" else k
            parts.append(f"{k}={_fmt_lambda(v) if isinstance(v, float) else v}")
    return " ".join(parts)


def _ir_view(module: Any, title: str, target: str = "") -> GraphView:
    legend = (
        "blue: activation quantize (at run time) · orange: integer kernel chosen by convert · "
        "grey: matmul kept in float · purple: repeated block"
    )
    view = GraphView(title, legend)
    func = module.main
    consts = {op.results[0].id: op for op in func.ops if op.name == "rq.const"}
    producer: dict[int, str] = {}
    for i, a in enumerate(func.args):
        nid = f"arg{i}"
        view.add(VNode(nid, (f"input %{i}", str(a.type)), "input"))
        producer[a.id] = nid
    seen: dict[tuple[str, str], int] = {}
    for op in func.ops:
        if op.name == "rq.const":
            continue
        layer = op.loc.layer if op.loc else ""
        k = seen[(op.name, layer)] = seen.get((op.name, layer), -1) + 1
        nid = f"{op.name}@{layer}#{k}"
        short = op.name.removeprefix("rq.")
        is_kernel = any(t in short for t in _KERNEL_OPS)
        lines = [f"{short} {layer}" if layer and layer != short else short]
        if is_kernel and op.name in _INT_KERNELS:
            lines[0] = f"{layer}" if layer else short
            lines.insert(1, f"kernel{f' ({target})' if target else ''}: {short}")
        attrs = _attr_line(op)
        if attrs:
            lines.append(attrs)
        weights = [
            str(consts[v.id].attr("name")).rsplit(".", 1)[-1] + " " + _dims(v.type.shape)
            for v in op.operands
            if v.id in consts
        ]
        if weights and is_kernel:
            lines.append("weights: " + ", ".join(weights[:3]) + (" …" if len(weights) > 3 else ""))
        lines.append(" ".join(str(r.type) for r in op.results[:1]))
        kind = (
            "qop"
            if op.name in _INT_KERNELS
            else "quant"
            if short == "quantize"
            else ("fop" if is_kernel else "op")
        )
        view.add(VNode(nid, tuple(lines), kind, group_of(layer)))
        for v in op.operands:
            if v.id in producer:
                view.connect(producer[v.id], nid)
        for r in op.results:
            producer[r.id] = nid
    view.add(VNode("output", ("output",), "output"))
    for v in func.outputs:
        if v.id in producer:
            view.connect(producer[v.id], "output")
    return view


_INT_KERNELS = ("rq.int_matmul", "rq.xnor_popcount_matmul", "rq.sparse24_matmul", "rq.qbmm",
                "rq.wo_matmul")


def view_of(obj: Any, title: str | None = None) -> GraphView:
    """Build the view of a QAT/fx graph, an IR module or a compiled model.

    Raises:
        TypeError: for anything else (the message lists what is accepted).
    """
    from torch import fx

    from rqcompile.ir.core import Module

    if isinstance(obj, GraphView):
        return obj
    if isinstance(obj, fx.GraphModule):
        what = "QAT graph" if "rq_config" in obj.meta else "fx graph"
        return _fx_view(obj, title or f"{type(obj).__name__} ({what})")
    if isinstance(obj, Module):
        return _ir_view(obj, title or "integer IR (rq.convert)")
    if hasattr(obj, "ir") and hasattr(obj, "target"):
        kind = str(getattr(obj.target, "kind", obj.target))
        return _ir_view(obj.ir, title or f"compiled for {obj.target}", kind)
    from rqcompile.errors import UsageError

    raise UsageError(
        f"rq.draw() takes a prepared graph (rq.prepare), an fx.GraphModule, an IR module "
        f"(rq.convert) or a compiled model (rq.build / rq.load), not {type(obj).__name__}."
    )


def _signature(view: GraphView, ids: list[str], group: str) -> tuple[Any, ...]:
    strip = re.compile(re.escape(group) + r"(?=[.:\s]|$)")
    return tuple(
        (view.nodes[i].status, *(strip.sub("#", ln) for ln in view.nodes[i].lines)) for i in ids
    )


def collapse_repeats(view: GraphView) -> GraphView:
    """Replace each group that repeats an earlier sibling (``blocks.1`` ≅ ``blocks.0``) by one
    node; the first of each family is kept in full. In a diff view the changes must repeat
    too (the signature includes each node's status), so nothing changed is hidden."""
    members: dict[str, list[str]] = {}
    for nid, n in view.nodes.items():
        if n.group:
            members.setdefault(n.group, []).append(nid)
    first: dict[tuple[str, Any], str] = {}
    collapsed: dict[str, str] = {}  # node id → replacement id
    out = GraphView(view.title, view.legend)
    for g, ids in members.items():
        family = g.rsplit(".", 1)[0]
        sig = _signature(view, ids, g)
        if (family, sig) not in first:
            first[(family, sig)] = g
            continue
        rep = f"collapsed:{g}"
        nq = sum(view.nodes[i].kind == "qop" for i in ids)
        same = "same structure" + (" and changes" if any(view.nodes[i].status for i in ids) else "")
        lines = (g, f"{same} as {first[(family, sig)]}", f"{len(ids)} nodes, {nq} quantized ops")
        out.add(VNode(rep, lines, "collapsed"))
        collapsed.update({i: rep for i in ids})
    for nid, n in view.nodes.items():
        if nid not in collapsed:
            out.add(n)
    for a, b in view.edges:
        a2, b2 = collapsed.get(a, a), collapsed.get(b, b)
        if a2 != b2:
            out.connect(a2, b2)
    # nodes are stored in insertion order; keep the collapsed node where its block was
    order = {nid: i for i, nid in enumerate(view.nodes)}
    for i, rep in collapsed.items():
        order[rep] = min(order.get(rep, order[i]), order[i])
    pos = {nid: order[nid] for nid in out.nodes}
    out.nodes = dict(sorted(out.nodes.items(), key=lambda kv: pos[kv[0]]))
    return out


def diff_views(before: GraphView, after: GraphView) -> GraphView:
    """Union of two views: nodes only in ``after`` are ``added``, only in ``before``
    ``removed``, in both with different text ``changed``."""
    out = GraphView(
        f"{before.title} → {after.title}", "green: added · red: removed · yellow: changed"
    )
    for nid, n in after.nodes.items():
        old = before.nodes.get(nid)
        status = "added" if old is None else "" if old.lines == n.lines else "changed"
        out.add(replace(n, status=status))
    for nid, n in before.nodes.items():
        if nid not in out.nodes:
            out.add(replace(n, status="removed"))
    for a, b in after.edges:
        out.connect(a, b)
    for a, b in before.edges:
        if "removed" in (out.nodes[a].status, out.nodes[b].status):
            out.connect(a, b)
    return out
