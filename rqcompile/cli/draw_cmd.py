"""``rqcompile draw``: a picture (SVG/PNG) of a model's rewritten graph or integer IR."""

from __future__ import annotations

import argparse
from typing import Any

from rqcompile.cli.common import Output, add_model_options, load_model_from_args, wrap

__all__ = ["register"]


def register(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "draw",
        help="draw a model's graph with quantization notes (SVG/PNG)",
        description=wrap(
            "Draw the rewritten QAT graph (or, with --ir, the integer IR with the "
            "chosen kernels) of a model name, QAT checkpoint or artifact. Uses graphviz's 'dot' "
            "when installed, else matplotlib."
        ),
        epilog="examples:\n  rqcompile draw char-transformer -o graph.svg\n"
        "  rqcompile draw ckpt.safetensors --ir -o ir.png\n"
        "  rqcompile draw char-transformer --diff -o what_prepare_did.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", required=True, metavar="PATH", help=".svg, .png, .pdf or .dot")
    p.add_argument("--ir", action="store_true", help="draw the integer IR (after convert)")
    p.add_argument(
        "--diff",
        action="store_true",
        help="mark what prepare changed (vs the captured float graph)",
    )
    p.add_argument("--no-collapse", action="store_true", help="draw repeated blocks in full")
    p.add_argument("--backend", default="auto", choices=["auto", "graphviz", "matplotlib"])
    add_model_options(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace, out: Output) -> int:
    import rqcompile as rq
    from rqcompile.errors import ConfigError

    kind, obj = load_model_from_args(args)
    before = None
    if args.diff:
        if kind == "artifact":
            raise ConfigError("--diff needs a model or checkpoint (an artifact has no QAT graph).")
        from rqcompile.capture.trace import capture
        from rqcompile.checkpoint import build_float_model

        model, ex = build_float_model(args.model, allow_import=args.allow_import)
        before = capture(model, ex)
    if args.ir and kind != "artifact":
        obj = rq.convert(obj)
    used = rq.draw(
        obj, args.output, diff_against=before, collapse=not args.no_collapse, backend=args.backend
    )
    out.result(
        f"wrote {args.output} (rendered with {used})", {"output": args.output, "renderer": used}
    )
    return 0
