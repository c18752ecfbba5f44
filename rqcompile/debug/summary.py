"""Text summary of a ``CompiledModule``: target and one row per integer kernel."""

from __future__ import annotations

from typing import Any

from rqcompile.debug.table import format_table

__all__ = ["compiled_summary", "dynamic_dims", "kernel_rows"]

_KERNELS = (
    "rq.int_matmul",
    "rq.xnor_popcount_matmul",
    "rq.sparse24_matmul",
    "rq.qbmm",
    "rq.wo_matmul",
    "rq.linear",
    "rq.matmul",
    "rq.conv2d",
)


def kernel_rows(ir: Any) -> list[dict[str, Any]]:
    """One dict per kernel op: layer, kernel (the kernel-table row ``select-kernels`` chose,
    with its weight layout, else the op name minus ``rq.``), output type, weight bytes."""
    consts = {op.results[0].id: op for op in ir.main.ops if op.name == "rq.const"}
    rows = []
    for op in ir.main.ops:
        if op.name not in _KERNELS:
            continue
        nbytes = 0
        for v in op.operands:
            src = consts.get(v.id)
            if src is not None:
                t = ir.constant(str(src.attr("name")))
                nbytes += t.numel() * t.element_size()
        kernel = str(op.attr("rq.kernel", op.name.removeprefix("rq.")))
        layout = op.attr("rq.weight_layout", None)
        rows.append(
            {
                "layer": op.loc.layer if op.loc else "",
                "kernel": kernel if layout is None else f"{kernel} ({layout})",
                "output": str(op.results[0].type),
                "weight_bytes": nbytes,
            }
        )
    return rows


def compiled_summary(exe: Any) -> str:
    rows = kernel_rows(exe.ir)
    total = sum(r["weight_bytes"] for r in rows)
    table = format_table(
        ["layer", "kernel", "output", "weight bytes"], [list(r.values()) for r in rows]
    )
    head = f"CompiledModule target={exe.target} inputs={', '.join(map(str, exe.signature))}"
    if exe.features:
        head += f"\nbuilt for CPU features: {', '.join(exe.features)}"
    if dims := dynamic_dims(exe.ir):
        head += f"\ndynamic dims: {dims}"
    return f"{head}\n{table}\ntotal weight bytes: {total}"


def dynamic_dims(ir: Any) -> str:
    """The declared dynamic dims of a symbolic IR (``main``'s attributes, written by
    ``translate/dynamic.py``): ``batch in [1, 64] (idx axis 0); seq in [1, 16] (idx axis 1)``,
    or ``""`` for a static IR."""
    f = ir.main
    dims = f.attr("rq.dynamic_dims", None)
    if not dims:
        return ""
    names = f.attr("rq.input_names", ())
    axes = f.attr("rq.dynamic_axes", ())
    parts = []
    for name, lo, hi in dims:
        where = ", ".join(
            f"{names[i] if i < len(names) else i} axis {a}"
            for i, ax in enumerate(axes)
            for a, n in ax
            if n == name
        )
        parts.append(f"{name} in [{lo}, {hi}] ({where})")
    return "; ".join(parts)
