"""``rqcompile opt``: run named IR passes on an IR file (the replay a ``PassError`` prints)."""

from __future__ import annotations

import argparse
from typing import Any

from rqcompile.cli.common import Output

__all__ = ["register"]


def register(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "opt",
        help="run named IR passes on an .mlir file (replays a failed pass)",
        description="Parse an rq IR file, run the given registered passes in order (with the "
        "verifier after each) and print the result. A PassError prints the exact command.",
        epilog="example: rqcompile opt --passes fold-ridge-dequant rq-dump/001_x.input.mlir",
    )
    p.add_argument("file", metavar="FILE.mlir", help="IR text (constants embedded or elided)")
    p.add_argument("--passes", required=True, help="comma-separated registered pass names")
    p.add_argument(
        "--constants",
        metavar="FILE.safetensors",
        help="weights for an IR file whose constants are elided",
    )
    p.add_argument("-o", "--output", metavar="PATH", help="write the result here, not stdout")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace, out: Output) -> int:
    from rqcompile.errors import ArtifactError, ConfigError
    from rqcompile.fileio import atomic_write, open_regular, read_text
    from rqcompile.ir.parser import parse_module
    from rqcompile.ir.printer import print_module
    from rqcompile.ir.verify import verify
    from rqcompile.passes.infra import PassContext, PassManager, registered_passes

    known = registered_passes()
    names = [n for n in args.passes.split(",") if n]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ConfigError(
            f"unknown pass(es) {', '.join(map(repr, bad)) or '(none given)'}; registered passes: "
            f"{', '.join(sorted(known))}."
        )
    text = read_text(args.file, what="an IR text file")
    consts = None
    if args.constants:
        from safetensors.torch import load as st_load

        with open_regular(args.constants, what="a safetensors file") as fh:
            raw = fh.read()
        try:
            consts = st_load(raw)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own untyped errors
            raise ArtifactError(
                f"{args.constants}: --constants must be a safetensors file of IR constants "
                f"({type(e).__name__}: {str(e)[:200]}); give the weights.safetensors the "
                "IR was dumped with."
            ) from e
    ir = parse_module(text, constants=consts)
    result = PassManager([known[n]() for n in names], verifier=verify).run(
        ir, PassContext.from_env()
    )
    printed = print_module(result)
    if args.output:
        atomic_write(args.output, printed + "\n", what="the IR")
    out.result("" if args.output else printed, {"output": args.output, "ir": printed})
    return 0
