"""The ``rqcompile`` command: one small module per subcommand, dispatched from here.

``demo`` (the main job), ``inspect`` (graph and per-layer table of a model, checkpoint or
artifact), ``lower`` (QAT checkpoint → artifact), ``draw`` (picture of a graph), ``opt``
(replay IR passes on a dumped file) and ``bench`` (the benchmark suite, in
``rqcompile.bench``). Output modes and exit codes live in :mod:`rqcompile.cli.common`.
"""

from __future__ import annotations

import argparse
import sys

from rqcompile.cli.common import Output, guarded, wrap

__all__ = ["build_parser", "main"]

EPILOG = """\
examples:
  rqcompile demo                                   ridge vs STE vs fp32, then integer CPU code
  rqcompile demo --steps 50 --save-checkpoint ckpt.safetensors
  rqcompile inspect ckpt.safetensors               rewritten graph + per-layer table
  rqcompile inspect char-transformer --preset A4W1+2:4
  rqcompile lower ckpt.safetensors --target llvm -o model.rq
  rqcompile inspect model.rq --ir                  kernels, weight bytes, integer IR
  rqcompile draw ckpt.safetensors -o graph.svg     picture with quantization notes
  rqcompile --json inspect model.rq                one JSON object for scripts
  rqcompile bench --quick                          the benchmark suite

exit status: 0 ok, 1 error (the message says what and how to fix it), 2 bad usage.
docs: README.md and docs/ (troubleshooting: docs/troubleshooting.md)."""

_COMMANDS = ("demo", "inspect", "lower", "draw", "opt")


def _modes(p: argparse.ArgumentParser, default: object) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-q",
        "--quiet",
        dest="mode",
        action="store_const",
        const="quiet",
        default=default,
        help="no progress bars or chatter; errors and exit status only",
    )
    g.add_argument(
        "--json",
        dest="mode",
        action="store_const",
        const="json",
        default=default,
        help="print one JSON object on stdout (for scripts)",
    )


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(
        prog="rqcompile",
        description=wrap(
            "Train neural networks at any precision (1-8 bit, ternary, binary, 2:4 "
            "sparse) with ridge-regression QAT and run them as integer kernels."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from rqcompile import __version__

    p.add_argument("--version", action="version", version=f"rqcompile {__version__}")
    _modes(p, "text")
    p.add_argument(
        "--debug", action="store_true", help="on an error, also print the Python traceback"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in _COMMANDS:
        mod = importlib.import_module(f"rqcompile.cli.{name}_cmd")
        sp = mod.register(sub)
        _modes(sp, argparse.SUPPRESS)  # also accepted after the command; keeps the global value
    sub.add_parser("bench", help="run the benchmark suite (options: rqcompile bench --help)")
    return p


def _bench(argv: list[str], out: Output) -> int:
    from rqcompile.cli.bench_cmd import run_bench

    return guarded(out, lambda: run_bench(argv, out))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # ``bench`` forwards every option after it verbatim to rqcompile.bench.main (own parser).
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    lead = argv[:first] if first is not None else []
    if first is not None and argv[first] == "bench" and set(lead) <= {"-q", "--quiet", "--json"}:
        mode = "json" if "--json" in lead else "quiet" if lead else "text"
        return _bench(argv[first + 1 :], Output(mode, "bench"))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    out = Output(args.mode, args.command, debug=args.debug)
    return guarded(out, lambda: int(args.run(args, out)))


if __name__ == "__main__":
    raise SystemExit(main())
