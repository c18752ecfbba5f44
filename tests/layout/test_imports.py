"""The package's import graph: no circles between files, and every layer imports downward.

Every ``import`` counts, at module level or inside a function (a lazy import that closes a
circle still makes two files depend on each other). A package's ``__init__`` counts as the
package; ``from a.b import c`` where ``c`` is a submodule counts as an import of ``a.b.c``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2] / "rqcompile"

#: Lower rank = lower layer. A file may import files of its own or a lower rank only. The
#: data flow reads top to bottom: numerics and the IR at the bottom, the stages that use
#: them above, the user-facing surface on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "version", "fileio", "names", "guard", "artifact_limits", "state_file"),
    ("quant",),  # numerics: grids, estimators, fake quantization, integer reference ops
    ("config",),  # QuantSpec / LayerSpec / QConfig / presets (validated against quant's tables)
    ("metrics", "quant.modules", "quant.hooks"),  # the nn.Modules that carry a config
    ("ir",),  # types, ops, printer, parser, verifier, semantics (reference kernels)
    ("capture",),  # nn.Module -> float fx graph
    ("debug.table", "debug.summary", "debug.costs", "debug.format"),  # text of every form
    ("passes.infra",),
    ("passes.qat", "translate", "passes.ir", "prepare_checks"),
    ("targets",),
    ("debug", "testing"),  # pictures, test models
    ("pipelines", "api", "checkpoint", "parity"),
    ("__init__", "bench", "demo", "cli", "__main__"),
)


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> nx.DiGraph:
    files = {_module_of(p): p for p in ROOT.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]  # fmt: skip
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t.startswith("rqcompile") and t != mod and t != "rqcompile":
                    g.add_edge(mod, t)
    return g


def _rank(mod: str) -> int:
    name = mod.removeprefix("rqcompile").lstrip(".") or "__init__"
    best = (-1, -1)
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best[1]:
                best = (rank, len(p))
    assert best[0] >= 0, f"{mod} is in no layer: add it to LAYERS"
    return best[0]


def test_no_import_circles() -> None:
    cycles = [sorted(c) for c in nx.strongly_connected_components(_graph()) if len(c) > 1]
    assert not cycles, "import circles between files:\n" + "\n".join(map(str, cycles))


def test_every_import_goes_down_the_layers() -> None:
    up = [f"{a} ({_rank(a)}) imports {b} ({_rank(b)})" for a, b in _graph().edges
          if _rank(b) > _rank(a)]  # fmt: skip
    assert not up, "imports from a higher layer:\n" + "\n".join(sorted(up))
