"""Where a compiled layer's call spends its time outside the kernels: each stage of the
llvm runner's per-call path timed in place, call after call (so every stage runs right
after the previous call's kernels, as it does in a user's loop)::

    python benchmarks/call_stages.py                 # the shapes below, 1 thread
    python benchmarks/call_stages.py --threads 2 --out benchmarks/results/call_stages.md

Stages (``targets/tvm/runtime.py``, ``targets/compiled.py``): ``prewake`` (thread count,
waking the pool), ``match`` (type, dtype, shape), ``to_tvm`` (DLPack), ``finite`` (the
NaN/Inf check: C, ``targets/tvm/finite.c``, or numpy with ``--numpy``), ``threads`` (lock,
thread setting), ``main`` (the VM: kernels and allocations), ``outputs`` (DLPack back to
torch), and then ``exe(x)`` itself, timed over as many calls. Medians in µs over
``--calls`` calls.

Since 2026-12-07 (session 14) a plain call does these stages in one function
(``runtime._VMRunner.fast_call``), so ``total`` here (each stage a call of its own, as
before) reads above what ``exe(x)`` now costs; the split still says where the time is.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

import rqcompile as rq
from rqcompile.targets.compiled import finite_array
from rqcompile.targets.tvm import runtime as rt

SHAPES = ((64, 1, "A4W4"), (1024, 1, "A4W4"), (4096, 1, "A1W1"), (1024, 64, "A8W8"),
          (2048, 64, "A2W2"), (4096, 256, "A8W8"))  # fmt: skip
STAGES = ("prewake", "match", "to_tvm", "finite", "threads", "main", "outputs", "total")
#: after the stages: ``exe(x)`` itself, as a user calls it (the shipped path)


def _layer(k: int, m: int, preset: str) -> tuple[rq.CompiledModule, torch.Tensor]:
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(k, k, bias=False))
    x = torch.randn(m, k)
    qat = rq.prepare(lin, (x,), preset)
    with torch.no_grad():
        qat(x)
    return rq.lower(qat, target="llvm"), x


def stages(exe: rq.CompiledModule, x: torch.Tensor, calls: int, use_numpy: bool) -> list[float]:
    run, pc = exe._runner, time.perf_counter_ns
    check = None if use_numpy else rt._all_finite()

    def call() -> tuple[object, tuple[int, ...]]:
        t0 = pc()
        threads = run.prewake((x,))
        t1 = pc()
        assert exe._fast_match((x,))
        t2 = pc()
        args = [rt._to_tvm(x)]
        t3 = pc()
        if check is not None:
            assert check(x.data_ptr(), x.numel(), x.element_size()) == 1
        else:
            assert finite_array(np.from_dlpack(args[0]))
        t4 = pc()
        with run._lock:
            rt._set_threads(threads)
            t5 = pc()
            res = run._main(*args, *run._weights)
        t6 = pc()
        outs = rt._outputs(res)
        t7 = pc()
        return outs, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t7 - t0)

    for _ in range(max(10, calls // 10)):
        call()
    rows = []
    for _ in range(calls):
        outs, t = call()
        del outs
        rows.append(t)
    whole = []
    for _ in range(calls):
        t0 = pc()
        exe(x)
        whole.append(pc() - t0)
    return [float(v) / 1e3 for v in np.median(np.array(rows), axis=0)] + [
        float(np.median(whole)) / 1e3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--numpy", action="store_true", help="the numpy finiteness check")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lines = [
        f"# Per-call stages, {a.threads} thread(s), finiteness check: "
        f"{'numpy' if a.numpy else 'C'}",
        "",
        f"`python benchmarks/call_stages.py --threads {a.threads}"
        f"{' --numpy' if a.numpy else ''}`, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}; medians in µs over {a.calls} calls",
        "",
        "| K=N | M | preset | " + " | ".join(STAGES) + " | exe(x) |",
        "| --- | --- | --- | " + " | ".join("---" for _ in STAGES) + " | --- |",
    ]
    print("\n".join(lines), flush=True)
    for k, m, preset in SHAPES:
        exe, x = _layer(k, m, preset)
        calls = a.calls if k * k * m < 1 << 28 else max(50, a.calls // 20)
        row = stages(exe, x, calls, a.numpy)
        line = f"| {k} | {m} | {preset} | " + " | ".join(f"{v:.1f}" for v in row) + " |"
        print(line, flush=True)
        lines.append(line)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
