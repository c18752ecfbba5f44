"""Text summary of a ``CompiledModule``: target and one row per integer kernel."""

from __future__ import annotations

from typing import Any

from rqcompile.debug.table import format_table

__all__ = ["compiled_summary"]

_KERNELS = (
    "rq.int_matmul",
    "rq.xnor_popcount_matmul",
    "rq.sparse24_matmul",
    "rq.qbmm",
    "rq.linear",
    "rq.matmul",
    "rq.conv2d",
)


def compiled_summary(exe: Any) -> str:
    ir = exe.ir
    rows = []
    total = 0
    for op in ir.main.ops:
        if op.name not in _KERNELS:
            continue
        nbytes = 0
        for v in op.operands:
            src = next((o for o in ir.main.ops if v in o.results and o.name == "rq.const"), None)
            if src is not None:
                t = ir.constant(str(src.attr("name")))
                nbytes += t.numel() * t.element_size()
        total += nbytes
        rows.append(
            [
                op.loc.layer if op.loc else "",
                op.name.removeprefix("rq."),
                str(op.results[0].type),
                nbytes,
            ]
        )
    head = f"CompiledModule target={exe.target} inputs={', '.join(map(str, exe.signature))}"
    if exe.features:
        head += f"\nbuilt for CPU features: {', '.join(exe.features)}"
    return f"{head}\n{format_table(['layer', 'kernel', 'output', 'weight bytes'], rows)}\ntotal weight bytes: {total}"
