"""The ``rqcompile`` command. ``rqcompile demo`` runs the main job; ``rqcompile inspect`` shows
an artifact. (Issue 7 adds ``lower`` and ``bench``.)"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _inspect(argv: list[str]) -> int:
    import rqcompile as rq

    p = argparse.ArgumentParser(prog="rqcompile inspect", description="Show a saved artifact.")
    p.add_argument("artifact", help="a file written by CompiledModule.save()")
    p.add_argument("--ir", action="store_true", help="also print the integer IR")
    a = p.parse_args(argv)
    try:
        exe = rq.load(a.artifact, trust_kernels=False)
    except rq.RQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rq.inspect(exe))
    if a.ir:
        print(rq.inspect(exe.ir))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "demo": "train ridge vs STE vs fp32 on Shakespeare, lower to integer CPU code, generate text",
        "inspect": "show a saved artifact (target, kernels, weight bytes, IR)",
    }
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rqcompile COMMAND [options]\n\ncommands:")
        for k, v in commands.items():
            print(f"  {k:<9} {v}")
        print("\nrun 'rqcompile COMMAND --help' for a command's options")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from rqcompile.demo.run import main as demo_main

        return demo_main(rest)
    if cmd == "inspect":
        return _inspect(rest)
    print(f"rqcompile: unknown command {cmd!r}; commands: {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
