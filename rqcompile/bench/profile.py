"""Per-kernel time table of a model lowered to the TVM CPU target.

``kernel_times(exe, *inputs)`` runs the model under the relax VM's instrument hook (TVM 0.27
has no ``profile=True`` VM; ``VirtualMachine.set_instrument`` calls a function before and
after every VM call) and returns, per called PrimFunc or VM builtin, the calls per run and
the seconds per run; ``format_kernel_times`` prints it as a Markdown table. It is how the
end-to-end breakdowns in ``benchmarks/results`` were taken::

    exe = rq.lower(qat, target="llvm")
    print(format_kernel_times(kernel_times(exe, x)))

Each hook call costs a few microseconds of Python, so tiny kernels read a little high;
the total is printed next to the untimed run time for that reason. ``clock="cpu"`` counts
this process's CPU time (one thread on a shared machine), ``"wall"`` elapsed time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rqcompile.bench.timing import CLOCKS
from rqcompile.errors import InputError

__all__ = ["KernelTime", "format_kernel_times", "kernel_times"]


@dataclass(frozen=True)
class KernelTime:
    """One VM callee: its name, calls per run, seconds per run and share of the total."""

    name: str
    calls: int
    seconds: float
    share: float


def kernel_times(
    exe: Any, *inputs: torch.Tensor, repeats: int = 5, clock: str = "cpu"
) -> list[KernelTime]:
    """Seconds per run of every PrimFunc (and VM builtin) the model calls, largest first.

    Args:
        exe: a ``CompiledModule`` built for a TVM CPU target (``rq.lower(..., "llvm")``).
        inputs: the model's inputs.
        repeats: runs to average over (after one warm-up run).
        clock: ``"cpu"`` or ``"wall"`` (see :mod:`rqcompile.bench.timing`).

    Raises:
        InputError: ``exe`` was not built for a TVM CPU target here (no relax VM to hook).
    """
    vm = getattr(getattr(exe, "backend", None), "vm", None)
    if vm is None or not hasattr(vm, "set_instrument"):
        raise InputError(
            "kernel_times needs a model built for a TVM CPU target on this machine "
            "(rq.lower(qat, target='llvm')); this one has no relax VM to profile."
        )
    if clock not in CLOCKS:
        raise InputError(f"clock must be one of {sorted(CLOCKS)}, not {clock!r}")
    now = CLOCKS[clock]
    total: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    started: list[float] = []

    def hook(func: Any, name: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            started.append(now())
        else:
            total[str(name)] += now() - started.pop()
            calls[str(name)] += 1
        return 0  # VMInstrumentReturnKind.kNoOp: run the call as usual

    with torch.no_grad():
        exe(*inputs)
        vm.set_instrument(hook)
        try:
            for _ in range(repeats):
                exe(*inputs)
        finally:
            vm.set_instrument(None)
    whole = sum(total.values()) or 1.0
    rows = [KernelTime(n, calls[n] // repeats, t / repeats, t / whole) for n, t in total.items()]
    return sorted(rows, key=lambda r: -r.seconds)


def format_kernel_times(rows: Sequence[KernelTime], *, top: int | None = None) -> str:
    """A Markdown table (kernel, calls, ms per run, share); VM builtins summed in one row."""
    kernels = [r for r in rows if not r.name.startswith("vm.builtin.")]
    builtins = [r for r in rows if r.name.startswith("vm.builtin.")]
    shown = kernels[:top] if top else kernels
    lines = ["| kernel | calls | ms per run | share |", "| --- | --- | --- | --- |"]
    for r in shown:
        lines.append(f"| {r.name} | {r.calls} | {r.seconds * 1e3:.2f} | {r.share:.1%} |")
    rest = kernels[len(shown) :]
    if rest:
        s = sum(r.seconds for r in rest)
        lines.append(f"| ({len(rest)} more) | | {s * 1e3:.2f} | {s / _total(rows):.1%} |")
    if builtins:
        s = sum(r.seconds for r in builtins)
        calls = sum(r.calls for r in builtins)
        lines.append(f"| VM builtins (alloc, checks) | {calls} | {s * 1e3:.2f} | "
                     f"{s / _total(rows):.1%} |")  # fmt: skip
    lines.append(f"| **total** | | {_total(rows) * 1e3:.2f} | |")
    return "\n".join(lines)


def _total(rows: Sequence[KernelTime]) -> float:
    return sum(r.seconds for r in rows) or 1.0
