"""A1W1 convolutions: XNOR-popcount vs the integer-affine kernel vs torch fp32 (issue 19).

One 3x3 convolution (stride 1, padding 1, no bias) per ResNet-18 stage shape, batch 1,
lowered to ``llvm`` twice from the same trained-free QAT model: once as convert lays it out
now (1-bit activations and weights → sign bits packed 32 per word along channels, im2col on
the words, ``rq.xnor_popcount_matmul``), once with the XNOR route switched off (codes as
int8 through im2col and ``rq.int_matmul``, what every quantized conv ran before). Both are
checked against the QAT forward (``rq.check_parity``) before timing. Timed interleaved in
one process with torch fp32 eager ``nn.Conv2d``, one thread, CPU time::

    python benchmarks/xnor_conv.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import rqcompile as rq  # noqa: E402
from rqcompile.bench.timing import environment, time_interleaved  # noqa: E402
from rqcompile.fileio import atomic_write  # noqa: E402
from rqcompile.translate import quantized  # noqa: E402

#: (channels, height = width): the 3x3 convolutions of ResNet-18's four stages at 224x224
SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))


def _kernels(exe: Any) -> list[str]:
    return sorted({op.name for op in exe.ir.func("main").ops if op.name.endswith("matmul")})


def run(shapes: Sequence[tuple[int, int]], budget: float) -> dict[str, Any]:
    torch.set_num_threads(1)
    rows = []
    for c, hw in shapes:
        torch.manual_seed(0)
        conv = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1, bias=False)).eval()
        x = torch.randn(1, c, hw, hw)
        qat = rq.prepare(conv, (x,), "A1W1")
        with torch.no_grad():
            qat(x)
        xnor = rq.lower(qat, target="llvm")
        with mock.patch.object(quantized, "_xnor_ok", lambda *a: False):
            affine = rq.lower(qat, target="llvm")
        checks = {}
        for name, exe in (("xnor", xnor), ("int_matmul", affine)):
            exe.threads = 1
            checks[name] = {"parity": str(rq.check_parity(qat, exe, x)), "kernels": _kernels(exe)}
        with torch.no_grad():
            stats = time_interleaved(
                {"torch-fp32": lambda: conv(x), "A1W1 int_matmul": lambda: affine(x),
                 "A1W1 xnor": lambda: xnor(x)},
                budget_s=budget, clock="cpu", max_repeats=200,
            )  # fmt: skip
        row = {"c": c, "hw": hw, "m": hw * hw, "k": 9 * c,
               "us": {k: v.median * 1e6 for k, v in stats.items()},
               "spread": {k: v.spread for k, v in stats.items()}, "checks": checks}  # fmt: skip
        rows.append(row)
        print(c, hw, {k: round(v) for k, v in row["us"].items()}, flush=True)
    return {"env": environment(1), "rows": rows}


def markdown(data: dict[str, Any], cmd: str) -> str:
    env = data["env"]
    out = [
        "# A1W1 convolutions: XNOR-popcount vs integer-affine vs torch fp32", "",
        f"`{cmd}`", "",
        f"- date: {env['date']}; machine: {env['cpu']}, {env['cores']} logical cores, "
        f"LLVM mcpu `{env['mcpu']}`; torch {env['torch']}, tvm {env['tvm']}",
        f"- ISA features: {', '.join(env['features'])}",
        "- one 3x3 conv, stride 1, padding 1, no bias, batch 1; 1 thread; median CPU time per "
        "call in µs, interleaved; both lowered models pass `rq.check_parity` first", "",
        "| C in = out | H = W | M (rows) | K | torch fp32 | A1W1 int_matmul | A1W1 xnor | "
        "xnor vs int_matmul | xnor vs fp32 | parity (xnor) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in data["rows"]:
        u = r["us"]
        out.append(
            f"| {r['c']} | {r['hw']} | {r['m']} | {r['k']} | {u['torch-fp32']:,.0f} | "
            f"{u['A1W1 int_matmul']:,.0f} | {u['A1W1 xnor']:,.0f} | "
            f"{u['A1W1 int_matmul'] / u['A1W1 xnor']:.2f}x | {u['torch-fp32'] / u['A1W1 xnor']:.2f}x"
            f" | {r['checks']['xnor']['parity'].split(';')[0]} |"
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("rq-bench"))
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timing per shape")
    ap.add_argument("--quick", action="store_true", help="the two smallest-M shapes only")
    args = ap.parse_args(argv)
    shapes = SHAPES[2:] if args.quick else SHAPES
    data = run(shapes, args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/xnor_conv.py" + (" --quick" if args.quick else "")
    atomic_write(args.out / "xnor_conv.json", json.dumps(data, indent=1))
    atomic_write(args.out / "xnor_conv.md", markdown(data, cmd))
    print(markdown(data, cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
