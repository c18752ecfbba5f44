"""One layer, the same weights, several kernel-table rows forced side by side: interleaved
medians of process CPU time per call at 1 thread (A/B of rows on this host)::

    python benchmarks/forced_rows.py --preset A4W4 --rows int_matmul:avx2,int_matmul:avx2_w4
    python benchmarks/forced_rows.py --preset W4 --rows wo_matmul:avx512,wo_matmul:avx2 --k 4096

Each round times every row once (``--reps`` calls each) in turn; the table gives the median
and the interquartile range over rounds. Nothing is asserted; rows the host cannot run fail
to build or crash (force only what the CPU has, or an emulated row).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import rqcompile as rq
from rqcompile.ir.printer import print_module
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.passes.ir import PackWeights, SelectKernels
from rqcompile.targets.tvm.kernels import table as _table  # noqa: F401 (registers rows)


def build(preset: str, k: int, n: int, m: int, rows: list[str]):
    torch.manual_seed(0)
    x = torch.randn(m, k)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)).eval(), (x,), preset)
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    want = rq.build(ir, "reference")(x)
    exes = {}
    for row in rows:
        forced = PassManager([SelectKernels(force=(row,)), PackWeights()]).run(ir, PassContext())
        kernel = row.replace(":", ".")
        if f'rq.kernel = "{kernel}"' not in print_module(forced):
            raise SystemExit(f"{row}: the layer does not take this row")
        with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
            exe = rq.build(forced, "llvm")
        err = float((exe(x) - want).abs().max() / want.abs().max())
        print(f"  {row}: built, max |err| / max |ref| = {err:.1e}", flush=True)
        exes[row] = exe
    return x, exes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="W4")
    p.add_argument("--rows", required=True, help="comma-separated op:isa")
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--m", type=int, default=1)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = a.rows.split(",")
    n = a.n or a.k
    print(f"{a.preset} K={a.k} N={n} M={a.m}, 1 thread, process CPU time", flush=True)
    x, exes = build(a.preset, a.k, n, a.m, rows)
    times: dict[str, list[float]] = {r: [] for r in rows}
    for exe in exes.values():  # warm up: packs, caches
        for _ in range(3):
            exe(x)
    for _ in range(a.rounds):
        for r, exe in exes.items():
            t0 = time.process_time_ns()
            for _ in range(a.reps):
                exe(x)
            times[r].append((time.process_time_ns() - t0) / a.reps / 1e3)
    print("| row | median µs | IQR µs |\n| --- | --- | --- |")
    for r, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        print(f"| {r} | {statistics.median(ts):,.0f} | {q[0]:,.0f}–{q[2]:,.0f} |")


if __name__ == "__main__":
    main()
