"""Batch-1 generation on a GPT-2-small-shaped model: ours vs torch fp32 / int8 with HF's KV cache.

A thin wrapper around :func:`rqcompile.bench.decode.main` that writes the repository's
``benchmarks/results/decode_<date>.{md,json}``::

    python benchmarks/decode.py                      # 1 thread and all cores, prompt 128, 128 new
    python benchmarks/decode.py --layers 1 --rounds 1 --presets A8W8   # smoke run

Nothing is asserted.
"""

from __future__ import annotations

import os
import sys

# the repository root replaces this folder on the path: benchmarks/kernels.py would shadow the
# `kernels` package that transformers imports
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from rqcompile.bench import REPO_RESULTS
from rqcompile.bench.decode import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        argv += ["--out", str(REPO_RESULTS)]
    sys.exit(main(argv))
