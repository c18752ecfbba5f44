"""``rqcompile bench``: forwards to ``rqcompile.bench.main(argv)``, imported only when asked.

The suite lives in its own module so that the CLI stays small and ``import rqcompile`` stays
light; a missing module is a readable error, not a traceback.
"""

from __future__ import annotations

import importlib

from rqcompile.cli.common import Output
from rqcompile.errors import RQError

__all__ = ["run_bench"]


def run_bench(argv: list[str], out: Output) -> int:
    try:
        bench = importlib.import_module("rqcompile.bench")
    except ModuleNotFoundError as e:
        if e.name not in ("rqcompile.bench",):
            raise
        raise RQError(
            "the benchmark suite (module rqcompile.bench) is not part of this installation. "
            "Run the scripts in benchmarks/ of a source checkout instead, e.g. "
            "python benchmarks/qat_quality.py --quick."
        ) from e
    # The suite owns its options (``--quick``, ``--json PATH``); ``-q``/``--json`` before
    # ``bench`` only decide where its printed text goes (nowhere / stderr).
    with out.captured_stdout():
        status = int(bench.main(argv) or 0)
    out.result("", {"exit_status": status})
    return status
