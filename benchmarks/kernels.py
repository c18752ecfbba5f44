"""Kernel benchmark: lowered rqcompile layers/models vs torch fp32 and torch dynamic int8.

A thin wrapper around :func:`rqcompile.bench.main` (also ``rqcompile bench``)::

    python benchmarks/kernels.py --quick      # < 2 minutes
    python benchmarks/kernels.py              # full grid, < ~10 minutes on 2 cores

Writes ``benchmarks/results/kernels_<mode>.{md,json,png}``. Nothing is asserted.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rqcompile.bench import REPO_RESULTS, main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:  # this script writes the repository's results
        argv += ["--out", str(REPO_RESULTS)]
    sys.exit(main(argv))
