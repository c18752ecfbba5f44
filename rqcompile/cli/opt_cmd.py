"""``rqcompile opt``: run named IR passes on an IR file (the replay a ``PassError`` prints)."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from rqcompile.cli.common import Output
from rqcompile.passes.infra import registered_passes

__all__ = ["register"]


def _load_passes() -> dict[str, type]:
    """Register every IR pass, and the kernel tables of the targets that are installed
    (``select-kernels`` and ``pack-weights`` read them)."""
    import rqcompile.passes.ir  # noqa: F401  (registers the passes)

    if importlib.util.find_spec("tvm") is not None:
        import rqcompile.targets.tvm.kernels.table  # noqa: F401  (registers "llvm")
    return {n: c for n, c in registered_passes().items() if _takes_ir(c)}


def _takes_ir(cls: type) -> bool:
    return cls.__module__.startswith("rqcompile.passes.ir")


def _catalogue() -> str:
    lines = []
    for name, cls in sorted(_load_passes().items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else name
        lines.append(f"  {summary}")
    return "IR passes (options as name{key=value,...}; tuples joined with +):\n" + "\n".join(lines)


def register(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "opt",
        help="run named IR passes on an .mlir file (replays a failed pass)",
        description="Parse an rq IR file, run the given registered passes in order (with the "
        "verifier after each) and print the result. A PassError prints the exact command.",
        epilog=_catalogue() + "\n\nexample: rqcompile opt --passes "
        "'fuse-attention{lanes=8},select-kernels{features=avx2}' model.mlir",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE.mlir", help="IR text (constants embedded or elided)")
    p.add_argument("--passes", required=True,
                   help="comma-separated pass names, each with optional {key=value,...}")  # fmt: skip
    p.add_argument(
        "--constants",
        metavar="FILE.safetensors",
        help="weights for an IR file whose constants are elided",
    )
    p.add_argument("-o", "--output", metavar="PATH", help="write the result here, not stdout")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace, out: Output) -> int:
    from rqcompile.errors import ArtifactError
    from rqcompile.fileio import atomic_write, open_regular, read_text
    from rqcompile.ir.parser import parse_module
    from rqcompile.ir.printer import print_module
    from rqcompile.ir.verify import verify
    from rqcompile.passes.infra import PassContext, PassManager, parse_pipeline

    _load_passes()
    passes = parse_pipeline(args.passes)  # an unknown pass or option: say so first
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
    result = PassManager(passes, verifier=verify).run(ir, PassContext.current())
    printed = print_module(result)
    if args.output:
        atomic_write(args.output, printed + "\n", what="the IR")
    out.result("" if args.output else printed, {"output": args.output, "ir": printed})
    return 0

