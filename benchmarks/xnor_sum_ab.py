"""The A1W1 panel kernel with the block's three products added to the running sum one by one
(``block_term(into=...)``: three FMAs) against adding their sum to it (one more op), for a
target's XNOR isa: ``--mcpu znver4`` builds the zmm VPOPCNTDQ kernel, ``--mcpu znver3`` the
AVX2 one (which runs on any AVX2 host). The kernel as shipped picks one per isa
(``x86.xnor_panel._XnorCounts.fused_sum``); this shows why. One process, the builds
alternating, process CPU time, medians::

    python benchmarks/xnor_sum_ab.py --mcpu znver4 --m 64,256 --k 1024,4096
    python benchmarks/xnor_sum_ab.py --mcpu znver3 --m 64,256 --k 1024,4096
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TVM_NUM_THREADS", "1")

import epilogue_share  # noqa: E402
import panel_kernels  # noqa: E402
from rqcompile.targets.tvm.x86 import xnor_panel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mcpu", default="znver4")
    ap.add_argument("--m", default="64,256")
    ap.add_argument("--k", default="1024,4096", help="K = N values, comma-separated")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    target = {"kind": "llvm", "mcpu": args.mcpu}
    init = xnor_panel._XnorCounts.__init__
    print(f"A1W1 panel kernel, target {target}, 1 thread, ms per call (median)")
    print("| M | K = N | sum, then add (ms) | three FMAs (ms) | shipped (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for m in (int(v) for v in args.m.split(",")):
        for k in (int(v) for v in args.k.split(",")):
            kernels = {}
            for label, fused in (("sum", False), ("fma", True), ("shipped", None)):

                def patched(self, *a, _fused=fused, **kw):  # type: ignore[no-untyped-def]
                    init(self, *a, **kw)
                    if _fused is not None:
                        self.fused_sum = _fused

                xnor_panel._XnorCounts.__init__ = patched
                kernels[label] = epilogue_share.build("xnor", m, k, k, target)
            xnor_panel._XnorCounts.__init__ = init
            ms = {label: v * 1e3 for label, v in panel_kernels.alternate(kernels, args.rounds).items()}
            print(f"| {m} | {k} | {ms['sum']:.3f} | {ms['fma']:.3f} | {ms['shipped']:.3f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
