"""W4/W8 weight-only layers: the GEMM walk of ``x86/wo.py`` (each block decoded once per chunk
of rows) against its GEMV walk (decoded per row tile), same build otherwise.

Both walks give the same bits (checked here per shape); medians of wall time per call,
interleaved rounds, one process::

    python benchmarks/wo_walks.py --k 4096 --m 16,64,256 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import rqcompile as rq
from rqcompile.targets.tvm.x86 import wo

OUT = Path(__file__).resolve().parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=4096, help="K = N")
    p.add_argument("--m", default="16,64,256", help="rows per call")
    p.add_argument("--preset", default="W4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--name", default=None, help="file stem under benchmarks/results")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    lin = torch.nn.Sequential(torch.nn.Linear(a.k, a.k, bias=False)).eval()
    rows = []
    default = wo.GEMM_MIN_ROWS
    for m in (int(v) for v in a.m.split(",")):
        x = torch.randn(m, a.k)
        ir = rq.convert(rq.prepare(lin, (x,), a.preset).eval(), example_inputs=(x,))
        exes = {}
        try:
            for walk, rows_from in (("gemv", 10**9), ("gemm", 1)):
                wo.GEMM_MIN_ROWS = rows_from
                exes[walk] = rq.build(ir, target="llvm")
        finally:
            wo.GEMM_MIN_ROWS = default
        assert torch.equal(exes["gemv"](x), exes["gemm"](x)), "the walks differ"
        times: dict[str, list[float]] = {w: [] for w in exes}
        for _ in range(a.rounds):
            for w, e in exes.items():
                e(x)
                t0, n = time.perf_counter(), 0
                while time.perf_counter() - t0 < 0.3:
                    e(x)
                    n += 1
                times[w].append((time.perf_counter() - t0) / n)
        med = {w: sorted(v)[len(v) // 2] * 1e6 for w, v in times.items()}
        gflops = 2 * m * a.k * a.k / (med["gemm"] * 1e-6) / 1e9
        rows.append((m, med["gemv"], med["gemm"], med["gemv"] / med["gemm"], gflops))
        print(f"{a.preset} K=N={a.k} M={m}: gemv {med['gemv']:,.0f} us, gemm {med['gemm']:,.0f} "
              f"us ({med['gemv'] / med['gemm']:.2f}x, {gflops:.0f} GFLOP/s)")
    lines = [f"# {a.preset} GEMM walk vs GEMV walk (`x86/wo.py`), K = N = {a.k}", "",
             f"`python benchmarks/wo_walks.py --k {a.k} --m {a.m} --preset {a.preset} "
             f"--threads {a.threads}`", "",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- machine: {platform.processor() or platform.machine()}, threads {a.threads}",
             f"- medians of {a.rounds} interleaved rounds of 0.3 s; same bits checked", "",
             "| M | GEMV walk (µs) | GEMM walk (µs) | speed-up | GEMM GFLOP/s |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    lines += [f"| {m} | {a_:,.0f} | {b:,.0f} | {r:.2f}x | {g:.0f} |" for m, a_, b, r, g in rows]
    name = a.name or f"wo_walks_{datetime.now(timezone.utc):%Y-%m-%d}"
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / (name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
