"""Static census of the int8 GEMM inner loop per instruction set (compile only, any x86 host).

Builds the packed A8W8 layer for each ``isa`` path for a named CPU and counts, in the
generated assembly, the instructions of the loop that holds the dot-product instructions
(``vpmaddwd`` on AVX2, ``vpdpbusd`` on VNNI)::

    python benchmarks/int8_inner_loops.py            # M=64, N=K=1024, block 128

It times nothing: it shows what the kernel asks of the core where no such core is at hand
(no VNNI machine was available to time the VNNI kernels).
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rqcompile.targets.tvm.kernels import integer as K
from rqcompile.targets.tvm.adapter import te, tvm
from rqcompile.targets.tvm.schedules.integer import kernel_options, schedule_prim_func

#: (CPU, the dot-product instruction, MACs of one such instruction per register width)
PATHS = (("znver3", "vpmaddwd", {"ymm": 16}),
         ("alderlake", "vpdpbusd", {"ymm": 32}),
         ("icelake-server", "vpdpbusd", {"ymm": 32, "zmm": 64}))  # fmt: skip


def _asm(mcpu: str, m: int, n: int, k: int, block: int) -> tuple[str, list[str]]:
    target = {"kind": "llvm", "mcpu": mcpu}
    isa = kernel_options(target)["int_matmul"]["isa"]
    nb = k // block
    w = [te.placeholder(s, d) for s, d in (((n, k), "int8"), ((n, nb), "float32"),
         ((n, nb), "float32"), ((n, nb), "int32"))]  # fmt: skip
    packed = K.te_pack_int_matmul_weights(*w, block=block, w_bits=8, w_signed=True, isa=isa)
    x = [te.placeholder(s, d) for s, d in (((m, k), "int8"), ((m, nb), "float32"),
         ((m, nb), "float32"))]  # fmt: skip
    pp = [te.placeholder([int(d) for d in p.shape], str(p.dtype)) for p in packed]
    y = K.te_int_matmul_packed(*x, *pp, block=block, w_bits=8, w_signed=True, isa=isa)
    func = K.prim_func([*x, *pp, y], name="kernel", kernel="int_matmul", block=block)
    lib = tvm.compile(schedule_prim_func(func, target), target=target)
    return isa, lib.mod.inspect_source("asm").splitlines()


def loop_bodies(asm: list[str]) -> list[list[str]]:
    """Straight-line code from each label to its first branch (a loop body ends in one)."""
    loops, cur = [], None
    for line in asm:
        if re.match(r"^\.LBB\d+_\d+:", line):
            cur = []
            loops.append(cur)
        elif cur is not None and line.startswith("\t") and not line.startswith("\t."):
            cur.append(line.replace("{vex}", "").split())
            if cur[-1][0].startswith("j"):
                cur = None
    return loops


def main(m: int = 64, n: int = 1024, k: int = 1024, block: int = 128) -> None:
    print(f"packed A8W8 layer, M={m} N={n} K={k} block {block}: hottest inner loop")
    for mcpu, dot, macs in PATHS:
        isa, asm = _asm(mcpu, m, n, k, block)
        loop = max(loop_bodies(asm), key=lambda body: sum(ins[0] == dot for ins in body))
        dots = [ins for ins in loop if ins[0] == dot]
        mac = sum(macs["zmm" if "zmm" in ins[-1] else "ymm"] for ins in dots)
        print(f"  {mcpu:15s} isa={isa:12s} {len(loop):3d} instructions, {len(dots):2d} {dot}"
              f", {mac} MACs: {mac / len(loop):4.1f} MACs per instruction")  # fmt: skip


if __name__ == "__main__":
    main()
