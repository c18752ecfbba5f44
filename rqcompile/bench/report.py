"""Markdown tables, JSON and a PNG plot of a benchmark run (all written atomically)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rqcompile.bench.layers import BASELINES, LayerResult

__all__ = ["layer_tables", "markdown", "write_atomic", "write_plot"]


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` via a temp file + rename, so a failed run leaves no partial file."""
    from rqcompile.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, what="the report")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _by_shape(results: Sequence[LayerResult]) -> dict[tuple[int, int, int], dict[str, LayerResult]]:
    out: dict[tuple[int, int, int], dict[str, LayerResult]] = {}
    for r in results:
        out.setdefault((r.k, r.n, r.m), {})[r.name] = r
    return out


def layer_tables(results: Sequence[LayerResult]) -> str:
    """Median µs per call, then speed-ups vs torch dynamic int8 and vs fp32 (higher = faster)."""
    shapes = _by_shape(results)
    names = list(dict.fromkeys(r.name for r in results))
    ours = [n for n in names if n not in BASELINES]
    head = ["K=N", "M", *names]
    times = [[k, m, *(f"{row[n].seconds * 1e6:,.0f} ±{row[n].spread:.0%}" for n in names)]
             for (k, _, m), row in shapes.items()]  # fmt: skip
    sparse = "A4W4+2:4" in ours and "A4W4" in ours
    vs_int8 = []
    for (k, _, m), row in shapes.items():
        dq = row["int8-dyn"].seconds
        cells = [f"{dq / row[n].seconds:.2f}" for n in ["fp32", *ours]]
        if sparse:
            cells.append(f"{row['A4W4'].seconds / row['A4W4+2:4'].seconds:.2f}")
        vs_int8.append([k, m, *cells])
    vs_fp32 = [[k, m, *(f"{row['fp32'].seconds / row[n].seconds:.2f}" for n in names[1:])]
               for (k, _, m), row in shapes.items()]  # fmt: skip
    return "\n\n".join([
        "Median time per call in µs (± interquartile spread / median):",
        _table(head, times),
        "Speed-up vs torch dynamic int8 (its time / ours; > 1 is faster than int8-dyn)"
        + ("; last column: dense A4W4 time / 2:4 A4W4 time" if sparse else "") + ":",
        _table(["K=N", "M", "fp32", *ours, *(["2:4 vs dense A4W4"] if sparse else [])], vs_int8),
        "Speed-up vs torch fp32 `nn.Linear` (eager):",
        _table(["K=N", "M", *names[1:]], vs_fp32),
    ])  # fmt: skip


#: End-to-end sections: (data key, title, note).
_E2E = (
    ("e2e", "Char transformer", "LM head kept in float, as in the demo; weight KiB of the "
     "whole model."),
    ("e2e_block", "One GPT-2-width block", "1 layer, width 768, 12 heads, MLP 3072, context "
     "128, char vocabulary (LM head kept in float); weight KiB of the whole model."),
)


def markdown(data: dict[str, Any], command: str) -> str:
    """The whole report: environment, layer tables, end to end, training step, lower time."""
    env = data["env"]
    parts = [
        f"# Kernel benchmark ({data['mode']})",
        f"Measured {env['date']} on **{env['cpu']}** ({env['cores']} cores, LLVM mcpu "
        f"`{env['mcpu']}`, features: {', '.join(env['features']) or 'none detected'}), "
        f"{env['threads']} thread(s) for torch and TVM, {env.get('clock', 'wall')} clock, "
        f"torch {env['torch']}, apache-tvm "
        f"{env['tvm']}. Command: `{command}`.",
        "Every rqcompile entry is the whole lowered layer (activation quantization, integer "
        "GEMM, epilogue, bias), checked against the reference target before timing. Times are "
        "medians of interleaved repeats; the spread shows how noisy the shared machine was. "
        "The `cpu` clock is this process's CPU time (with one thread: time spent computing, "
        "without the time other jobs held the core); `wall` is elapsed time.",
    ]
    if data.get("error"):
        parts += [f"**The run stopped early:** {data['error']}"]
    if data.get("layers"):
        parts += ["## One linear layer", layer_tables([LayerResult(**r) for r in data["layers"]])]
    for key, title, note in _E2E:
        if not data.get(key):
            continue
        e = data[key]
        rows = [[r["name"], f"{r['tokens_per_s']:,.0f}", f"{r['vs_fp32']:.2f}",
                 f"{r['seconds'] * 1e3:.2f} ±{r['spread']:.0%}",
                 "" if r["weight_bytes"] is None else f"{r['weight_bytes'] / 1024:,.0f}",
                 f"{r['build_s']:.1f}"] for r in e["rows"]]  # fmt: skip
        parts += [f"## {title} end to end (batch {e['batch'][0]} x {e['batch'][1]})", note,
                  _table(["model", "tokens/s", "vs fp32", "ms per batch", "weight KiB",
                          "build s"], rows)]  # fmt: skip
    if data.get("train"):
        t = data["train"]
        rows = [[r["name"], f"{r['seconds'] * 1e3:.1f} ±{r['spread']:.0%}", f"{r['vs_fp32']:.2f}",
                 "" if r["ridge_vs_ste"] is None else f"{r['ridge_vs_ste']:.2f}"]
                for r in t["rows"]]  # fmt: skip
        parts += [f"## QAT training step (batch {t['batch'][0]} x {t['batch'][1]})",
                  _table(["model", "ms per step", "vs fp32", "ridge / STE"], rows)]
    if data.get("lower"):
        lo = data["lower"]
        parts += ["## `lower` time, GPT-2-124M shape (no tuning)",
                  _table(["layers", "params", "preset", "prepare s", "convert s", "build s",
                          "lower s (convert + build)"],
                         [[lo["n_layer"], f"{lo['params'] / 1e6:.0f}M", lo["preset"],
                           f"{lo['prepare_s']:.1f}", f"{lo['convert_s']:.1f}",
                           f"{lo['build_s']:.1f}", f"{lo['lower_s']:.1f}"]])]  # fmt: skip
    return "\n\n".join(parts) + "\n"


def write_plot(path: Path, results: Sequence[LayerResult], title: str) -> bool:
    """Speed-up vs fp32 per shape and candidate (log scale). False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shapes = _by_shape(results)
    keys = list(shapes)
    names = [n for n in dict.fromkeys(r.name for r in results) if n != "fp32"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(keys) + 2), 4.2))
    for n in names:
        ys = [shapes[s]["fp32"].seconds / shapes[s][n].seconds for s in keys]
        ax.plot(range(len(keys)), ys, marker="o" if n != "int8-dyn" else "s",
                linestyle="--" if n == "int8-dyn" else "-", label=n)  # fmt: skip
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), [f"{k}\nM={m}" for k, _, m in keys], fontsize=7)
    ax.set_xlabel("K = N, batch M")
    ax.set_ylabel("speed-up vs torch fp32 (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    from rqcompile.fileio import atomic_path

    try:
        with atomic_path(path, what="the plot") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return True


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))
