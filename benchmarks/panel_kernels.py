"""The packed-weight panel kernels alone (no call path): ``int_matmul`` on int8 panels, on
nibble panels (A4W4, A8W4; ``--bits 4``) and on 2-bit panels (A2W2, ternary; ``--bits 2``),
and the A1W1 XNOR panels (``--bits 1``), at M = 1 (GEMV) or ``--m`` rows, built for this
host and timed call after call (process CPU time, median over rounds; the kernels
alternate, ``--calls`` calls each per round)::

    python benchmarks/panel_kernels.py --k 1024,2048,4096 --ghz 3.6

``--baseline REV`` A/Bs a kernel change in one process: it copies the package as of git
revision ``REV`` under another name (``rqcompile_base``, its imports rewritten), builds
each kernel from both trees and alternates them call round by call round (separate
processes differ here by up to 40% in the same build: physical page placement). MACs per
cycle use ``--ghz``.

    python benchmarks/panel_kernels.py --baseline HEAD~1 --bits 4,2
    python benchmarks/panel_kernels.py --baseline HEAD~1 --bits 1 --m 256 --calls 3
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", "1")

from rqcompile.targets.tvm.adapter import host_llvm_target, te, tvm  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as Kc  # noqa: E402
from rqcompile.targets.tvm.kernels import matmul as MMc  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import kernel_options as options_c  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import schedule_prim_func as schedule_c  # noqa: E402

BLOCK = 128
LAYOUTS = {8: ("int8 panels", {}), 4: ("nibble panels", {"nibbles": True}),
           2: ("2-bit panels", {"crumbs": True}), 1: ("XNOR panels", {})}  # fmt: skip


def baseline(rev: str) -> Any:
    """The package as of git revision ``rev``, imported as ``rqcompile_base``: its
    ``kernels.integer`` and ``schedules.integer`` modules, as ``(K, schedule_prim_func,
    kernel_options)``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tempfile.mkdtemp(prefix="rq-base-")
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "rqcompile"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for f in files:
        data = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=root, capture_output=True,
                              check=True).stdout  # fmt: skip
        dest = os.path.join(out, "rqcompile_base" + f[len("rqcompile"):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if f.endswith(".py"):
            data = re.sub(rb"\brqcompile\b", b"rqcompile_base", data)
        with open(dest, "wb") as fh:
            fh.write(data)
    sys.path.insert(0, out)
    mods = [importlib.import_module(f"rqcompile_base.targets.tvm.{m}")
            for m in ("kernels.integer", "schedules.integer", "kernels.matmul")]  # fmt: skip
    return mods[0], mods[1].schedule_prim_func, mods[1].kernel_options, mods[2]


def build(bits: int, m: int, n: int, k: int, target: dict[str, Any],
          tree: Any = None) -> tuple[Any, list[Any]]:  # fmt: skip
    """One packed ``int_matmul`` kernel (signed ``bits``-bit weights, 8-bit activations; 1:
    the A1W1 ``xnor_popcount_matmul``) and random arguments of its shapes; ``tree``:
    :func:`baseline`'s modules, else this one's."""
    K, schedule_prim_func, kernel_options, MM = tree or (Kc, schedule_c, options_c, MMc)
    nb, opts = k // BLOCK, LAYOUTS[bits][1]
    ph = lambda s, d: te.placeholder(s, d)  # noqa: E731
    if bits == 1:
        isa = kernel_options(target)["xnor_popcount_matmul"]["isa"]
        w = [ph((n, k // 32), "uint32"), *(ph((n, nb), d) for d in ("float32", "float32", "int32"))]
        packed = MM.te_pack_xnor_weights(*w, block=BLOCK, k=k, isa=isa)
        x = [ph((m, k // 32), "uint32"), ph((m, nb), "float32"), ph((m, nb), "float32")]
        pp = [ph([int(d) for d in p.shape], str(p.dtype)) for p in packed]
        y = MM.te_xnor_popcount_matmul_packed(*x, *pp, block=BLOCK, k=k, isa=isa)
        return _compiled(K, schedule_prim_func, [*x, *pp, y], "xnor_popcount_matmul", target)
    isa = kernel_options(target)["int_matmul"]["isa"]
    wq = ph((n, k), "int8") if bits == 8 else ph((n, k // 2), "uint8")
    w = [wq, *(ph((n, nb), d) for d in ("float32", "float32", "int32"))]
    packed = K.te_pack_int_matmul_weights(*w, block=BLOCK, w_bits=bits, w_signed=True, isa=isa,
                                          **opts)  # fmt: skip
    x = [ph((m, k), "int8"), ph((m, nb), "float32"), ph((m, nb), "float32")]
    pp = [ph([int(d) for d in p.shape], str(p.dtype)) for p in packed]
    y = K.te_int_matmul_packed(*x, *pp, block=BLOCK, w_bits=bits, w_signed=True, isa=isa,
                               **opts)  # fmt: skip
    return _compiled(K, schedule_prim_func, [*x, *pp, y], "int_matmul", target)


def _compiled(K: Any, schedule_prim_func: Any, tensors: list[Any], kernel: str,
              target: Any) -> tuple[Any, list[Any]]:  # fmt: skip
    func = K.prim_func(tensors, name="kernel", kernel=kernel, block=BLOCK)
    lib = tvm.compile(schedule_prim_func(func, target), target=target)
    rng = np.random.default_rng(0)

    def arr(t: Any) -> Any:
        shape, dt = [int(d) for d in t.shape], str(t.dtype)
        a = rng.integers(0, 3, shape) if "int" in dt else rng.random(shape) + 0.5
        return tvm.runtime.tensor(a.astype(dt))

    return lib["kernel"], [arr(t) for t in tensors]


def alternate(kernels: dict[str, tuple[Any, list[Any]]], rounds: int,
              calls: int = 3) -> dict[str, float]:  # fmt: skip
    """Median seconds (process CPU time) per call of each ``(fn, args)``: ``rounds`` rounds,
    each one warm-up and ``calls`` timed calls of every kernel in turn (more calls keep a
    GEMV's weights warm in the caches; alternating kernels of several MiB evict each other)."""
    times: dict[str, list[float]] = {label: [] for label in kernels}
    for _ in range(rounds):
        for label, (fn, fargs) in kernels.items():
            fn(*fargs)
            for _ in range(calls):
                t = time.process_time()
                fn(*fargs)
                times[label].append(time.process_time() - t)
    return {label: float(np.median(v)) for label, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", default="1024,2048,4096", help="K = N values, comma-separated")
    ap.add_argument("--bits", default="8,4,2",
                    help="weight layouts: 8, 4 (nibbles), 2 (2-bit), 1 (A1W1 XNOR panels)")
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--ghz", type=float, default=0.0, help="core clock for MACs per cycle")
    ap.add_argument("--baseline", default="", help="git revision to A/B against, same process")
    ap.add_argument("--mcpu", default="", help="build for this LLVM CPU instead of the host "
                    "(e.g. znver3: the AVX2 kernels, run on this host)")
    args = ap.parse_args()
    base = baseline(args.baseline) if args.baseline else None
    target = {"kind": "llvm", "mcpu": args.mcpu} if args.mcpu else host_llvm_target()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, cwd=os.path.dirname(__file__)).stdout.strip()  # fmt: skip
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mcpu = args.mcpu or host_llvm_target().attrs.get("mcpu", "?")
    print(f"{stamp}; {platform.processor() or platform.machine()}, mcpu "
          f"{mcpu}; commit {commit}; 1 thread; M = {args.m}, block "
          f"{BLOCK}; median µs per call (process CPU time), {args.rounds} rounds x "
          f"{args.calls} calls\n")  # fmt: skip
    trees = {"": None} if base is None else {f"{args.baseline}: ": base, "this tree: ": None}
    print("| K = N | layout | µs | MACs/cycle |\n| --- | --- | --- | --- |")
    for k in (int(v) for v in args.k.split(",")):
        kernels = {(label, b): build(b, args.m, k, k, target, tree)
                   for b in (int(v) for v in args.bits.split(",")) for label, tree in trees.items()}
        med = alternate(kernels, args.rounds, args.calls)
        for (label, b), sec in med.items():
            rate = f"{args.m * k * k / (sec * args.ghz * 1e9):.1f}" if args.ghz else "-"
            print(f"| {k} | {label}{LAYOUTS[b][0]} | {sec * 1e6:,.1f} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
