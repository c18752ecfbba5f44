"""Integer GEMM cores on a device target vs a torch float matmul of the same shape.

    python benchmarks/device_gemm.py --target cuda --size 4096       # on a GPU machine
    python benchmarks/device_gemm.py --target opencl --size 256      # anywhere (PoCL, CPU)

Times the three rq integer cores (int8 affine ``int_matmul_core``, ``xnor_popcount_core``,
``sparse24_core``) built through the device path (``device_kernel``: the same schedules,
lowering and launcher as whole models) against torch ``fp16`` matmul on CUDA (``fp32`` on
the CPU for OpenCL). Each core is first checked bit-exact against the reference (skip with
``--no-check`` at large sizes). Times include the launcher's input copy-in and output
copy-out (device-to-device on CUDA), so they are an upper bound on kernel time.

Status: the CUDA kernels are simple-thread (no tensor cores / dp4a / mma.sp), so expect them
far below the issue's 1.5x-over-fp16 target; no GPU was available to measure them.
``--out`` writes a markdown table with the device name to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from rqcompile.quant import reference as ref
from rqcompile.quant.bitpack import pack_sparse24
from rqcompile.targets.tvm.device.kernel import device_kernel
from rqcompile.targets.tvm.kernels import integer as K
from rqcompile.targets.tvm.adapter import te


def _build(builder: str, args: list[torch.Tensor], target: str, **params: Any) -> Callable:
    tv = {torch.int8: "int8", torch.uint8: "uint8", torch.uint32: "uint32"}
    phs = [te.placeholder(tuple(a.shape), tv[a.dtype], name=f"a{i}") for i, a in enumerate(args)]
    out = getattr(K, builder)(*phs, **params)
    func = K.prim_func(
        [*phs, out], name="kernel", kernel=builder.removeprefix("te_"), block=params["block"]
    )
    specs = [(tuple(int(d) for d in t.shape), str(t.dtype)) for t in [*phs, out]]
    return device_kernel(func, specs, len(args), target)


def _time(fn: Callable[[], Any], repeat: int, cuda: bool) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cases(m: int, n: int, k: int, block: int) -> dict[str, tuple[str, list[torch.Tensor], Any]]:
    g = torch.Generator().manual_seed(0)
    xq = torch.randint(-128, 128, (m, k), generator=g).to(torch.int8)
    wq = torch.randint(-128, 128, (n, k), generator=g).to(torch.int8)
    words = (k + 31) // 32
    xb = torch.randint(0, 2**32, (m, words), generator=g, dtype=torch.int64).to(torch.uint32)
    wb = torch.randint(0, 2**32, (n, words), generator=g, dtype=torch.int64).to(torch.uint32)
    keep = (torch.rand(n, k // 4, 4, generator=g).argsort(-1) < 2).reshape(n, k)
    vals, idx = pack_sparse24((wq.to(torch.int32).clamp(-7, 7) * keep).to(torch.int8))
    return {
        "int8 (A8W8)": ("te_int_matmul_core", [xq, wq], lambda: ref.int_matmul_core(xq, wq, block)),
        "xnor (A1W1)": (
            "te_xnor_popcount_core",
            [xb, wb],
            lambda: ref.xnor_popcount_core(xb, wb, block=block),
        ),
        "2:4 (A8W4+2:4)": (
            "te_sparse24_core",
            [xq, vals, idx],
            lambda: ref.sparse24_core(xq, vals, idx, block=block),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=["opencl", "cuda"], default="opencl")
    p.add_argument("--size", type=int, default=256, help="M = N = K")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-check", action="store_true", help="skip the bit-exact check")
    p.add_argument("--out", help="write a markdown table here")
    a = p.parse_args(argv)
    cuda = a.target == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure (use --target opencl to exercise the path)")
        return 0
    dev = torch.device("cuda" if cuda else "cpu")
    s = a.size
    xf = torch.randn(s, s, device=dev, dtype=torch.float16 if cuda else torch.float32)
    wf = torch.randn(s, s, device=dev, dtype=xf.dtype)
    base = _time(lambda: xf @ wf.t(), a.repeat, cuda)
    name = torch.cuda.get_device_name() if cuda else "OpenCL (first platform device)"
    rows = [f"| torch {xf.dtype} matmul | {base * 1e3:.3f} | 1.00x |"]
    for label, (builder, args, expect) in _cases(s, s, s, a.block).items():
        params: dict[str, Any] = {"block": a.block}
        run = _build(builder, args, a.target, **params)
        inputs = [x.to(dev) for x in args]
        if not a.no_check:
            (got,) = run(*inputs)
            if not torch.equal(got.cpu(), expect()):
                print(f"{label}: MISMATCH against the reference", file=sys.stderr)
                return 1
        t = _time(lambda run=run, inputs=inputs: run(*inputs), a.repeat, cuda)
        rows.append(f"| {label} core | {t * 1e3:.3f} | {base / t:.2f}x |")
    table = "\n".join(
        [
            f"{a.target} on {name}, M=N=K={s}, block {a.block}, median of {a.repeat}",
            "",
            "| kernel | ms | speed vs torch |",
            "| --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
