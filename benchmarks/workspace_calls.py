"""What a kernel's scratch buffer costs by its storage scope (``kernels.common.scratch``).

A ``T.parallel`` loop of G iterations, each declaring ``--buffers`` 128-byte int32 buffers
(the size of a GEMV's accumulators), is built with the buffers in "local" scope and in
"global" scope, and timed per call (``time.perf_counter_ns``, median of 2000 calls, 1
thread). TVM 0.27 lowers a "local" buffer to a ``TVMBackendAllocWorkspace`` /
``TVMBackendFreeWorkspace`` pair per iteration, a small "global" one to a stack ``alloca``::

    python benchmarks/workspace_calls.py
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", "1")

from rqcompile.targets.tvm.adapter import IRBuilder, T, host_llvm_target, te, tirx, tvm  # noqa: E402


def build(groups: int, buffers: int, scope: str):
    x = te.placeholder((groups, 16), "int32")

    def body(ins, outs):
        xb, y = ins[0], outs[0]
        with IRBuilder() as ib, T.parallel(0, groups) as g:
            bufs = [T.decl_buffer((32,), "int32", scope=scope) for _ in range(buffers)]
            r = tirx.Ramp(0, 1, 16)
            tot = xb[g, r]
            for b in bufs:
                T.buffer_store(b, xb[g, r] + tirx.Broadcast(g, 16), [r])
            for b in bufs:
                tot = tot + b[r]
            T.buffer_store(y, tot, [g, r])
        return ib.get()

    y = te.extern((groups, 16), [x], body, dtype="int32", name="k")
    lib = tvm.compile(te.create_prim_func([x, y]).with_attr("global_symbol", "k"),
                      target=host_llvm_target())  # fmt: skip
    args = [tvm.runtime.tensor(np.zeros((groups, 16), "int32")) for _ in range(2)]
    return lib["k"], args


def median_us(fn, args, calls: int = 2000) -> float:
    for _ in range(100):
        fn(*args)
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn(*args)
        ts.append(time.perf_counter_ns() - t0)
    return float(np.median(ts)) / 1e3


def main() -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp}; {platform.processor() or platform.machine()}, mcpu "
          f"{host_llvm_target().attrs.get('mcpu', '?')}; 1 thread; µs per call, median\n")
    print("| iterations | buffers each | \"local\" | \"global\" | ns per local buffer |")
    print("| --- | --- | --- | --- | --- |")
    for groups in (32, 1024):
        base = median_us(*build(groups, 0, "global"))
        for buffers in (1, 3):
            loc = median_us(*build(groups, buffers, "local"))
            glo = median_us(*build(groups, buffers, "global"))
            per = (loc - base) * 1e3 / (groups * buffers)
            print(f"| {groups} | {buffers} | {loc:.2f} | {glo:.2f} | {per:.0f} |", flush=True)


if __name__ == "__main__":
    main()
