"""rqcompile's presets against the peers a user would pick, one ``nn.Linear`` per shape.

A thin wrapper around :func:`rqcompile.bench.peers.main` (also ``rqcompile bench --peers``);
needs the ``bench`` extra (``pip install -e ".[bench]"``: onnxruntime, onnx, torchao), and
leaves out, with a note, any peer whose package is missing::

    python benchmarks/peers.py --quick            # K=N=1024, M in {1, 64}
    python benchmarks/peers.py --threads 1,2      # full grid: K=N in {1024, 2048, 4096}, M in {1, 64, 256}

Writes ``benchmarks/results/peers_<date>.{md,json}``. Nothing is asserted.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rqcompile.bench import REPO_RESULTS
from rqcompile.bench.peers import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:  # this script writes the repository's results
        argv += ["--out", str(REPO_RESULTS)]
    sys.exit(main(argv))
