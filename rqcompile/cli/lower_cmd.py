"""``rqcompile lower``: a QAT checkpoint → a one-file artifact for a target.

Stages (one progress-bar step each): rebuild the QAT graph from the checkpoint, convert to the
integer IR, build for the target, check the result against the QAT model on the checkpoint's
input shapes, save atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from rqcompile.cli.common import Output, wrap

__all__ = ["register"]


def register(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "lower",
        help="lower a QAT checkpoint to an artifact (.rq) for a target",
        description=wrap(
            "Rebuild a trained QAT model from its checkpoint (rq.save_qat, or "
            "'rqcompile demo --save-checkpoint'), convert it to integer IR, build it for the "
            "target and save one artifact file. The lowered model is checked against the QAT "
            "model on the checkpoint's input shapes before it is saved."
        ),
        epilog="examples:\n  rqcompile lower ckpt.safetensors --target llvm -o model.rq\n"
        '  rqcompile lower ckpt.safetensors --target \'{"kind": "llvm", "mcpu": "znver3"}\'\n'
        "  rqcompile lower ckpt.safetensors --target reference -o ref.rq --json\n"
        "  rqcompile lower ckpt.safetensors --target llvm --dynamic -o any_batch.rq",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="QAT checkpoint (.safetensors)")
    p.add_argument(
        "--target",
        default="llvm",
        help="'llvm' (TVM, this CPU), 'reference' (pure torch) or a JSON target dict",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="artifact to write (default: CHECKPOINT with suffix .rq)",
    )
    p.add_argument(
        "--allow-import",
        action="store_true",
        help="let the checkpoint name its builder by import path (runs that module)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="dynamic batch (axis 0, up to 64) and, for token inputs, sequence (axis 1, up to "
        "the checkpoint's length): the artifact holds the symbolic IR and builds kernels per "
        "shape on first use (rq.lower(..., dynamic=True))",
    )
    p.add_argument(
        "--one-build",
        action="store_true",
        help="with --dynamic: build once, one module for every shape in the ranges, and store "
        "its kernels in the artifact (rq.lower(..., dynamic=True, specialize='none'))",
    )
    p.add_argument("--no-check", action="store_true", help="skip the lowered-vs-QAT check")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="write the artifact even when the lowered-vs-QAT check finds a real mismatch "
        "(a loud note is printed; for debugging only)",
    )
    p.set_defaults(run=run)
    return p


def _check_inputs(qat: Any) -> tuple[Any, ...]:
    """Seeded inputs with the checkpoint's shapes: normal floats; ids 0/1 (valid for any table)."""
    import torch

    g = torch.Generator().manual_seed(0)
    xs = []
    for n in qat.graph.nodes:
        if n.op != "placeholder":
            continue
        tm = n.meta["tensor_meta"]
        if tm.dtype.is_floating_point:
            xs.append(torch.randn(tuple(tm.shape), generator=g, dtype=tm.dtype))
        else:
            xs.append(torch.randint(0, 2, tuple(tm.shape), generator=g, dtype=tm.dtype))
    return tuple(xs)


def run(args: argparse.Namespace, out: Output) -> int:
    import rqcompile as rq
    from rqcompile.errors import NumericsError, UsageError
    from rqcompile.checkpoint import load_qat, read_qat_meta
    from rqcompile.targets.target import Target

    if args.one_build and not args.dynamic:
        raise UsageError("--one-build needs --dynamic.")

    target = Target.parse(args.target)  # a bad target fails before any slow work
    read_qat_meta(args.checkpoint)  # a missing or foreign file too
    dest = args.output or os.path.splitext(args.checkpoint)[0] + ".rq"
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        raise FileNotFoundError(2, "output directory does not exist", os.path.dirname(dest))
    seconds: dict[str, float] = {}
    with out.bar(5, f"lower → {target}") as bar:

        def step(name: str, t0: float) -> None:
            seconds[name] = round(time.perf_counter() - t0, 3)
            bar.set_postfix_str(name)
            bar.update(1)

        t = time.perf_counter()
        qat = load_qat(args.checkpoint, allow_import=args.allow_import)
        step("load", t)
        t = time.perf_counter()
        ir = rq.convert(qat, dynamic=args.dynamic)
        step("convert", t)
        t = time.perf_counter()
        exe = rq.build(ir, target, specialize="none") if args.one_build else rq.build(ir, target)
        step("build", t)
        t = time.perf_counter()
        diff = None
        parity = None
        if not args.no_check:
            xs = _check_inputs(qat)
            parity = rq.check_parity(qat, exe, xs)  # tie-aware: rqcompile/parity.py
            diff = parity.max_abs_diff
            if not parity.ok and not args.allow_mismatch:
                raise NumericsError(
                    f"the lowered model does not match the QAT model; {dest} was NOT written.\n"
                    f"{parity}\nFix the model or converter; to write it anyway (debugging "
                    "only) pass --allow-mismatch."
                )
            if not parity.ok:
                print(
                    f"rqcompile lower: WARNING: writing {dest} although the lowered model does "
                    f"NOT match the QAT model (--allow-mismatch): {parity.line()}",
                    file=sys.stderr,
                )
        step("check", t)
        t = time.perf_counter()
        exe.save(dest)
        step("save", t)
    size = os.path.getsize(dest)
    kernels = sorted({op.name.removeprefix("rq.") for op in ir.main.ops if "matmul" in op.name})
    text = f"wrote {dest} ({size / 1024:.1f} KiB, target {target}; kernels: {', '.join(kernels)})"
    if parity is not None:
        text += f"\nlowered vs QAT on seeded inputs: {parity.line()}"
    out.result(
        text,
        {
            "output": dest,
            "bytes": size,
            "target": str(target),
            "kernels": kernels,
            "max_abs_diff": diff,
            "parity": None if parity is None else parity.verdict,
            "mismatch_overridden": bool(parity is not None and not parity.ok),
            "seconds": seconds,
        },
    )
    return 0
