"""Instruction census of the weight-only GEMV kernel (``rq.wo_matmul`` panels), W4 vs W8.

Builds the packed ``rq.wo_matmul`` layer (M=1 by default, N=K=2048, block 128) for each panel
row and a named CPU, and prints, per weight, the instructions of the generated inner loop
(static: the hottest loop of the assembly) — no AVX-512 host or timer needed::

    python benchmarks/wo_inner_loops.py                      # both rows, W4 and W8
    python benchmarks/wo_inner_loops.py --export /tmp/wo --mcpu znver3 --isa avx2 --bits 4
    valgrind --tool=callgrind --toggle-collect='wo_kernel*' \
        python benchmarks/wo_inner_loops.py --load /tmp/wo --run 3 --isa avx2 --bits 4
        # build for a CPU valgrind runs (it has no AVX-512; the avx512 row then runs as
        # split zmm) and call the built kernel 3 times under callgrind: instructions per
        # weight = Ir / (3·M·N·K). --run without --load builds in the same process.

Nothing is timed or asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from rqcompile.targets.tvm.adapter import te, tvm
from rqcompile.targets.tvm.kernels import integer as K
from rqcompile.targets.tvm.schedules.integer import schedule_prim_func

# the assembly's loop bodies are split the same way as for the int8 census (this folder)
from int8_inner_loops import loop_bodies  # noqa: E402

#: (row isa, CPU to build for)
PATHS = (("avx512", "icelake-server"), ("avx2", "znver3"))


def build(isa: str, mcpu: str, *, m: int, n: int, k: int, block: int, bits: int,
          signed: bool = True, symbol: str = "wo_kernel"):  # fmt: skip
    """The packed kernel and its pack, built for ``mcpu``: ``(kernel lib, pack lib, args)``."""
    target = {"kind": "llvm", "mcpu": mcpu}
    nb = k // block
    wshape = (n, k // 2) if bits <= 4 else (n, k)
    w = [te.placeholder(wshape, "uint8" if bits <= 4 else "int8"),
         te.placeholder((n, nb), "float32"), te.placeholder((n, nb), "float32")]
    packed = K.te_pack_wo_weights(*w, block=block, w_bits=bits, w_signed=signed, isa=isa)
    pf = K.prim_func([*w, *packed], name="wo_pack", kernel="pack_weights", block=block)
    plib = tvm.compile(schedule_prim_func(pf, target), target=target)
    x = te.placeholder((m, k), "float32")
    pp = [te.placeholder([int(d) for d in p.shape], str(p.dtype)) for p in packed]
    y = K.te_wo_matmul_packed(x, *pp, block=block, w_bits=bits, w_signed=signed, isa=isa)
    func = K.prim_func([x, *pp, y], name=symbol, kernel="wo_matmul", block=block)
    lib = tvm.compile(schedule_prim_func(func, target), target=target)
    return lib, plib, (w, packed, x, y)


def census(isa: str, mcpu: str, **shape) -> str:
    lib, _, _ = build(isa, mcpu, **shape)
    asm = lib.mod.inspect_source("asm").splitlines()
    loop = max(loop_bodies(asm), key=lambda body: sum("fmadd" in ins[0] for ins in body))
    fmas = [ins for ins in loop if "fmadd" in ins[0]]
    lanes = 16 if any("zmm" in " ".join(i) for i in fmas) else 8
    weights = len(fmas) * lanes
    ops = {}
    for ins in loop:
        ops[ins[0]] = ops.get(ins[0], 0) + 1
    mix = " ".join(f"{o}:{c}" for o, c in sorted(ops.items(), key=lambda t: -t[1]))
    return (f"{len(loop):3d} instructions, {weights:4d} weights: "
            f"{len(loop) / weights * 16:5.2f} per 16 weights | {mix}")  # fmt: skip


def _tensors(*, m: int, n: int, k: int, block: int, bits: int, isa: str, signed: bool):
    nb = k // block
    w = [te.placeholder((n, k // 2) if bits <= 4 else (n, k), "uint8" if bits <= 4 else "int8"),
         te.placeholder((n, nb), "float32"), te.placeholder((n, nb), "float32")]
    packed = K.te_pack_wo_weights(*w, block=block, w_bits=bits, w_signed=signed, isa=isa)
    x = te.placeholder((m, k), "float32")
    return w, packed, x, te.placeholder((m, n), "float32")


def run(isa: str, mcpu: str, calls: int, load: str | None = None, export: str | None = None,
        **shape) -> None:  # fmt: skip
    tag = f"{isa}_w{shape['bits']}"
    symbol = f"wo_kernel_{tag}{os.environ.get('RQ_WO_SYMBOL_SUFFIX', '')}"
    if load:
        lib = tvm.runtime.load_module(f"{load}/{tag}.so")
        plib = tvm.runtime.load_module(f"{load}/{tag}_pack.so")
        w, packed, x, y = _tensors(isa=isa, **shape)
    else:
        lib, plib, (w, packed, x, y) = build(isa, mcpu, symbol=symbol, **shape)
    if export:
        os.makedirs(export, exist_ok=True)
        lib.export_library(f"{export}/{tag}.so")
        plib.export_library(f"{export}/{tag}_pack.so")
        with open(f"{export}/{tag}.json", "w") as f:  # for a runner that imports no compiler
            json.dump({"symbol": symbol, "tensors": [[[int(d) for d in t.shape], str(t.dtype)]
                                                     for t in (*w, *packed, x, y)]}, f)  # fmt: skip
        return
    rng = np.random.default_rng(0)
    dev = tvm.cpu()

    def arr(t, fill=None):
        shp, dt = [int(d) for d in t.shape], str(t.dtype)
        a = fill if fill is not None else (rng.integers(0, 200, shp) if "int" in dt
                                           else rng.standard_normal(shp))
        return tvm.runtime.tensor(np.asarray(a).astype(dt), dev)

    wa = [arr(t) for t in w]
    pa = [arr(t, np.zeros([int(d) for d in t.shape])) for t in packed]
    plib["wo_pack"](*wa, *pa)
    xa, ya = arr(x), arr(y, np.zeros([int(d) for d in y.shape]))
    f = lib[symbol]
    for _ in range(calls):
        f(xa, *pa, ya)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, default=1)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--bits", type=int, nargs="*", default=[4, 8])
    p.add_argument("--isa", default=None)
    p.add_argument("--mcpu", default=None)
    p.add_argument("--unsigned", action="store_true")
    p.add_argument("--run", type=int, default=0, help="call the kernel this many times")
    p.add_argument("--export", help="build, write the libraries to this folder, run nothing")
    p.add_argument("--load", help="run the libraries --export wrote here (no build)")
    a = p.parse_args(argv)
    shape = dict(m=a.m, n=a.n, k=a.k, block=a.block, signed=not a.unsigned)
    paths = [(a.isa, a.mcpu)] if a.isa else PATHS
    for isa, mcpu in paths:
        for bits in a.bits:
            if a.run or a.export:
                run(isa, mcpu, a.run, load=a.load, export=a.export, bits=bits, **shape)
            else:
                print(f"{isa:7s} {mcpu:15s} W{bits}: {census(isa, mcpu, bits=bits, **shape)}")


if __name__ == "__main__":
    main()
