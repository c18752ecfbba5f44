"""``rq.draw`` / ``rq.draw_diff``: pictures of the rewritten graph with quantization notes.

Rendering, in order of preference (``backend="auto"``):

1. graphviz: the ``dot`` program on ``PATH`` (Debian/Ubuntu ``apt install graphviz``, macOS
   ``brew install graphviz``). We write DOT text ourselves, so the Python ``graphviz``
   package is not needed.
2. matplotlib + networkx: a layered top-to-bottom layout computed here (longest-path layers,
   one barycenter sweep). Used, with an ``RQWarning`` saying so, when ``dot`` is missing.

``.dot`` output needs neither. The file is written atomically (temp file + rename).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rqcompile.debug.graphview import GraphView, collapse_repeats, diff_views, view_of
from rqcompile.errors import ConfigError, RQError

__all__ = ["draw", "draw_diff", "to_dot"]

FILL = {
    "input": "#d9f2d9",
    "output": "#d9f2d9",
    "quant": "#cfe2ff",  # quantize → dequant
    "qop": "#ffd98a",  # quantized matmul / chosen integer kernel
    "fop": "#e6e6e6",  # matmul left in float
    "op": "#ffffff",
    "collapsed": "#f3e6ff",
}
STATUS = {"added": "#7bd87b", "removed": "#f08080", "changed": "#fff27a"}
FORMATS = ("svg", "png", "pdf", "dot")


def _fill(n: Any) -> str:
    return STATUS.get(n.status) or FILL.get(n.kind, "#ffffff")


def _title(view: GraphView) -> str:
    return f"{view.title}\n{view.legend}" if view.legend else view.title


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(view: GraphView) -> str:
    """DOT text for a view: top to bottom, repeated-block groups as clusters."""
    out = [
        "digraph rq {",
        "  graph [rankdir=TB, labelloc=t, fontsize=16, fontname=Helvetica, "
        f"label={_q(_title(view))}, "
        "nodesep=0.25, ranksep=0.3];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10, '
        'margin="0.08,0.03"];',
        '  edge [arrowsize=0.6, color="#555555"];',
    ]
    ids = {nid: f"n{i}" for i, nid in enumerate(view.nodes)}
    groups: dict[str, list[str]] = {}
    for nid, n in view.nodes.items():
        groups.setdefault(n.group, []).append(nid)
    for g, members in groups.items():
        indent = "  "
        if g:
            out.append(
                f'  subgraph cluster_{len(out)} {{ label={_q(g)}; style=dashed; color="#999999";'
            )
            indent = "    "
        for nid in members:
            n = view.nodes[nid]
            label = "\\n".join(x.replace("\\", "\\\\").replace('"', '\\"') for x in n.lines)
            extra = ", penwidth=2" if n.status else ""
            out.append(f'{indent}{ids[nid]} [label="{label}", fillcolor="{_fill(n)}"{extra}];')
        if g:
            out.append("  }")
    out.extend(f"  {ids[a]} -> {ids[b]};" for a, b in view.edges)
    out.append("}")
    return "\n".join(out) + "\n"


def _format(path: str, fmt: str | None) -> str:
    f = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if f not in FORMATS:
        raise ConfigError(
            f"rq.draw: cannot write {path!r}: format {f or '(none)'!r} is not one of "
            f"{', '.join(FORMATS)}. Use a path ending in .svg or .png, or pass format='svg'."
        )
    return f


def _atomic(path: str, write: Any) -> None:
    from rqcompile.fileio import atomic_path

    with atomic_path(path, what="the picture") as tmp:
        write(tmp)


def _render_dot(view: GraphView, path: str, fmt: str, dot: str) -> None:
    def write(tmp: str) -> None:
        r = subprocess.run(
            [dot, f"-T{fmt}", "-Gdpi=96", "-o", tmp],
            input=to_dot(view),
            text=True,
            capture_output=True,
            timeout=300,
        )
        if r.returncode != 0:
            raise RQError(f"graphviz 'dot' failed ({r.returncode}): {r.stderr.strip()[:500]}")

    _atomic(path, write)


def _layers(view: GraphView) -> dict[str, int]:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(view.nodes)
    g.add_edges_from(view.edges)
    layer: dict[str, int] = {}
    order = list(nx.topological_sort(g))
    for nid in order:
        layer[nid] = max((layer[p] + 1 for p in g.predecessors(nid)), default=0)
    for nid in reversed(order):  # sources (weights, masks) sit just above their first user
        if g.in_degree(nid) == 0 and g.out_degree(nid) > 0:
            layer[nid] = min(layer[s] for s in g.successors(nid)) - 1
    return layer


def _render_matplotlib(view: GraphView, path: str, fmt: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot is imported
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    layer = _layers(view)
    rows: dict[int, list[str]] = {}
    for nid in view.nodes:
        rows.setdefault(layer[nid], []).append(nid)
    preds: dict[str, list[str]] = {n: [] for n in view.nodes}
    for a, b in view.edges:
        preds[b].append(a)
    x: dict[str, float] = {}
    for r in sorted(rows):  # one barycenter sweep keeps edges short
        ids = sorted(
            rows[r], key=lambda n: sum(x[p] for p in preds[n]) / len(preds[n]) if preds[n] else 0
        )
        for i, nid in enumerate(ids):
            x[nid] = i - (len(ids) - 1) / 2
    width = max(len(v) for v in rows.values())
    fig_w, fig_h = max(6.0, 3.0 * width), max(4.0, 0.95 * len(rows) + 1)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.set_xlim(-width / 2 - 0.5, width / 2 + 0.5)
    ax.set_ylim(-len(rows) + 0.3, 0.8)
    ax.axis("off")
    ax.set_title(_title(view), fontsize=10)
    boxes = {}
    for nid, n in view.nodes.items():
        boxes[nid] = ax.text(
            x[nid],
            -layer[nid],
            "\n".join(n.lines),
            ha="center",
            va="center",
            fontsize=7,
            bbox={
                "boxstyle": "round,pad=0.3",
                "fc": _fill(n),
                "ec": "#444444",
                "lw": 2 if n.status else 0.8,
            },
        )
    for a, b in view.edges:
        ax.add_patch(
            FancyArrowPatch(
                (x[a], -layer[a]),
                (x[b], -layer[b]),
                patchA=boxes[a].get_bbox_patch(),
                patchB=boxes[b].get_bbox_patch(),
                arrowstyle="-|>",
                mutation_scale=8,
                color="#555555",
                lw=0.7,
            )
        )

    def write(tmp: str) -> None:
        fig.savefig(tmp, format=fmt, dpi=96, bbox_inches="tight")

    try:
        _atomic(path, write)
    finally:
        plt.close(fig)


def _render(view: GraphView, path: str, fmt: str | None, backend: str) -> str:
    f = _format(path, fmt)
    if backend not in ("auto", "graphviz", "matplotlib"):
        raise ConfigError(f"rq.draw: backend {backend!r}; use 'auto', 'graphviz' or 'matplotlib'.")
    if f == "dot":
        _atomic(path, lambda tmp: Path(tmp).write_text(to_dot(view), encoding="utf-8"))
        return "dot-text"
    dot = shutil.which("dot")
    if backend == "graphviz" and dot is None:
        raise RQError(
            "rq.draw(backend='graphviz'): the graphviz 'dot' program is not on PATH. Install "
            "graphviz (apt install graphviz / brew install graphviz / conda install graphviz), "
            "or use backend='matplotlib'."
        )
    if dot is not None and backend != "matplotlib":
        _render_dot(view, path, f, dot)
        return "graphviz"
    try:
        import matplotlib  # noqa: F401  (availability check only)
    except ImportError as e:
        raise RQError(
            "rq.draw needs graphviz (the 'dot' program: apt install graphviz) or matplotlib "
            "(pip install 'rqcompile[plot]'); neither is installed. Writing a .dot file works "
            "without either."
        ) from e
    if backend == "auto":
        from rqcompile.errors import warn

        warn(
            "rq.draw: graphviz 'dot' not found, drawing with matplotlib (a simpler layout). "
            "Install graphviz (apt install graphviz) for the better one.",
            stacklevel=3,
        )
    _render_matplotlib(view, path, f)
    return "matplotlib"


def draw(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    diff_against: Any = None,
    collapse: bool = True,
    backend: str = "auto",
    format: str | None = None,
    title: str | None = None,
) -> str:
    """Draw a QAT graph, IR module or compiled model to ``path`` (.svg, .png, .pdf or .dot).

    Each node shows its quantization: quantizers give role, bits, block, estimator, λ and
    N:M sparsity; rewritten matmuls their layer, preset and kernel block; after ``convert``,
    the integer kernel chosen per layer. Colours: blue quantizers, orange quantized ops /
    integer kernels, grey matmuls left in float, purple collapsed repeated blocks.

    Args:
        obj: ``rq.prepare`` result (or any fx.GraphModule), ``rq.convert`` result, or a
            compiled model.
        path: output file; the suffix picks the format unless ``format`` is given.
        diff_against: an earlier form of the same graph; added nodes are green, removed red,
            changed yellow (same as :func:`draw_diff`).
        collapse: draw repeated blocks (``blocks.1`` built like ``blocks.0``) as one node.
        backend: ``"auto"`` (graphviz, else matplotlib with a warning), ``"graphviz"`` or
            ``"matplotlib"``.
        title: the picture's title (default: what ``obj`` is).

    Returns:
        What rendered the file: ``"graphviz"``, ``"matplotlib"`` or ``"dot-text"``.

    Raises:
        ConfigError: unknown format or backend. RQError: no renderer installed.
        TypeError: ``obj`` is not a drawable form.

    Example:
        >>> import os, tempfile, torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4")
        >>> rq.draw(qat, os.path.join(tempfile.mkdtemp(), "g.dot"))
        'dot-text'
    """
    view = view_of(obj, title)
    if diff_against is not None:
        view = diff_views(view_of(diff_against), view)
        if title:
            view.title = title
    if collapse:
        view = collapse_repeats(view)
    return _render(view, os.fspath(path), format, backend)


def draw_diff(before: Any, after: Any, path: str | os.PathLike[str], **kwargs: Any) -> str:
    """Draw ``after`` with the changes from ``before`` marked: added green, removed red.

    Typical use: one pass's effect, e.g. the captured float graph vs ``rq.prepare``'s output,
    or two IR modules around an IR pass. Same options as :func:`draw`.
    """
    return draw(after, path, diff_against=before, **kwargs)
