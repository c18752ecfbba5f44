"""One symbolic build vs per-shape static builds of a dynamic model (issue 20 item 1).

For the demo char transformer (1 layer, n_embd 32 by default, context 16, dynamic batch
1..64 and sequence 1..16) and each preset: the build time of the one symbolic build
(``rq.lower(..., dynamic=True, specialize="none")``), the build time of a static build per
(batch, seq) point, and steady-state latency (median of ``--reps`` calls after warm-up) of
both at each point (the best of 5 alternating rounds of ``--reps`` calls each, so a loaded
machine's noise hits both alike), with the largest error against the QAT model. One thread
per call by default (``--threads``), so shared machines measure the kernels rather than the
scheduler.

    python benchmarks/dynamic_one_build.py --out benchmarks/results/dynamic_one_build.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rqcompile as rq
from rqcompile.demo.models import CharTransformer

POINTS = [(1, 1), (1, 16), (4, 8), (16, 16), (64, 16)]


def median_ms(fn, x, reps: int) -> float:
    for _ in range(3):
        fn(x)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def best_of_rounds(fns, x, reps: int, rounds: int = 5) -> list[float]:
    """Per function, the best median over ``rounds`` rounds that alternate the functions."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], median_ms(fn, x, reps))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="A8W8,A1W1")
    ap.add_argument("--embd", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = [
        f"# One symbolic build vs per-shape static builds (char transformer, n_embd "
        f"{args.embd}, batch 1..64, seq 1..16, llvm, {args.threads} thread(s))",
        "",
        f"command: `python benchmarks/dynamic_one_build.py --presets {args.presets} "
        f"--embd {args.embd} --reps {args.reps} --threads {args.threads}`",
        "",
    ]
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        model = CharTransformer(65, n_layer=1, n_embd=args.embd, block_size=16)
        qat = rq.prepare(model, (torch.zeros(8, 16, dtype=torch.long),), preset).eval()
        t0 = time.perf_counter()
        one = rq.lower(qat, "llvm", dynamic=True, specialize="none")
        one_build = time.perf_counter() - t0
        one.threads = args.threads
        fallbacks = sorted(set(one.symbolic_fallbacks))
        lines += [f"## {preset}", "",
                  f"one build (convert + build): {one_build:.1f} s; generic-kernel "
                  f"fallbacks: {', '.join(f.split(' (')[0] for f in fallbacks) or 'none'}",
                  "", "| batch | seq | static build s | static ms | one-build ms | ratio | "
                  "max abs err one / static |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for b, s in POINTS:
            x = torch.randint(0, 65, (b, s), generator=torch.Generator().manual_seed(b * 100 + s))
            t0 = time.perf_counter()
            static = rq.lower(qat, "llvm", example_inputs=(x,))
            sb = time.perf_counter() - t0
            static.threads = args.threads
            with torch.no_grad():
                ref = qat(x)
            e1 = float((one(x) - ref).abs().max())
            e2 = float((static(x) - ref).abs().max())
            ms_s, ms_1 = best_of_rounds([static, one], x, args.reps)
            lines.append(f"| {b} | {s} | {sb:.1f} | {ms_s:.3f} | {ms_1:.3f} | "
                         f"{ms_1 / ms_s:.2f} | {e1:.2e} / {e2:.2e} |")  # fmt: skip
            print(lines[-1], flush=True)
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
