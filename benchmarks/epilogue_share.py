"""How much of a panel GEMM the per-block float epilogue costs (issue 19's bounds).

Builds one packed kernel twice for this host (``int_matmul`` at 8x8 bits or on nibble
weights two per byte, the panels of A4W4/A8W4 GEMVs, or the A1W1 ``xnor_popcount_matmul``):
as shipped, and with ``epilogue.block_term`` replaced by a bare conversion of the block's
integer sums (``float(P)``), which keeps the dot-product loops,
the tile walk and the stores but drops the per-block float work. The second kernel computes
nothing useful; it only measures what the integer part alone costs. Both time one call at
a time (process CPU time, median) in separate builds of the same process, interleaved::

    python benchmarks/epilogue_share.py --kernel int8 --m 256 --k 1024,4096
    python benchmarks/epilogue_share.py --kernel xnor --m 256 --k 1024,4096
    python benchmarks/epilogue_share.py --kernel int4 --m 1 --k 1024,4096 --calls 50  # GEMV

MACs per cycle use ``--ghz`` (the clock ``benchmarks/vector_ports.c`` measured).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", "1")

import panel_kernels  # noqa: E402
from panel_kernels import BLOCK, alternate  # noqa: E402

import rqcompile.targets.tvm.x86.panel as panel  # noqa: E402
from rqcompile.targets.tvm.adapter import host_llvm_target, tirx  # noqa: E402


def build(kind: str, m: int, n: int, k: int, target: dict[str, Any]) -> tuple[Any, list[Any]]:
    """``panel_kernels.build`` by kernel name: ``int8``, ``int4`` (nibble panels), ``xnor``."""
    return panel_kernels.build({"int8": 8, "int4": 4, "xnor": 1}[kind], m, n, k, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", choices=("int8", "int4", "xnor"), default="int8")
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--k", default="1024,4096", help="K = N values, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per kernel and round")
    ap.add_argument("--ghz", type=float, default=0.0, help="core clock for MACs per cycle")
    args = ap.parse_args()
    target = {"kind": "llvm", **dict(host_llvm_target().export())}
    target = {k: target[k] for k in ("kind", "mcpu", "mattr") if k in target}
    shipped = panel.block_term
    def bare(p: Any, row: Any, col: Any, lanes: int = 8, into: Any = None, **kw: Any) -> Any:
        """``float(P)``, added to the running sum where the kernel passes it (``into``:
        the fused sum of the zmm XNOR panels), so no block's work is dead code."""
        term = tirx.Cast(f"float32x{lanes}", p)
        return term if into is None else into + term

    print(f"{args.kernel}, M = {args.m}, block {BLOCK}, target {target}, 1 thread")
    print("| K = N | with epilogue (ms) | integer part alone (ms) | epilogue share |"
          + (" MACs/cycle with / without |" if args.ghz else ""))
    print("| --- | --- | --- | --- |" + (" --- |" if args.ghz else ""))
    for k in (int(v) for v in args.k.split(",")):
        kernels = {}
        for label, term in (("full", shipped), ("bare", bare)):
            panel.block_term = term
            kernels[label] = build(args.kernel, args.m, k, k, target)
        panel.block_term = shipped
        med = alternate(kernels, args.rounds, args.calls)
        full, bare_t = med["full"], med["bare"]
        row = f"| {k} | {full * 1e3:.3f} | {bare_t * 1e3:.3f} | {1 - bare_t / full:.0%} |"
        if args.ghz:
            macs = args.m * k * k / 1e9 / args.ghz
            row += f" {macs / full:.1f} / {macs / bare_t:.1f} |"
        print(row)


if __name__ == "__main__":
    main()
