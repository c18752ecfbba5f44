"""Does ONNX Runtime's intra-op pool keep spinning after a ``run`` returns? CPU time of all
this process's threads while it sleeps right after each run, with the session option
``session.intra_op.allow_spinning`` at ORT's default (1) and at 0 (issue 19: the peers'
standalone series pauses before each candidate, ``rqcompile.bench.timing.settle``)::

    pip install onnxruntime onnx && python benchmarks/ort_spin.py --threads 2
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu_ticks() -> int:
    """User + system clock ticks of every thread of this process so far."""
    total = 0
    for task in glob.glob("/proc/self/task/*/stat"):
        try:
            fields = open(task).read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def main() -> None:
    import onnxruntime as ort

    from rqcompile.bench.peers import _onnx_matmul

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle-ms", type=float, default=100.0)
    a = ap.parse_args()
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.m, a.k)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "matmul.onnx"
        _onnx_matmul(rng.standard_normal((a.k, a.k)).astype(np.float32), path)
        print(f"ORT {ort.__version__}, {a.threads} intra-op threads, MatMul {a.m}x{a.k}x{a.k}, "
              f"{a.runs} runs, each followed by {a.idle_ms:.0f} ms asleep")  # fmt: skip
        for spin in ("1", "0"):
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.add_session_config_entry("session.intra_op.allow_spinning", spin)
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            sess.run(None, feed)
            busy = 0
            for _ in range(a.runs):
                sess.run(None, feed)
                before = _cpu_ticks()
                time.sleep(a.idle_ms / 1000)
                busy += _cpu_ticks() - before
            print(f"allow_spinning={spin}: {busy * tick_ms / a.runs:.1f} ms of CPU per "
                  f"{a.idle_ms:.0f} ms asleep after a run")  # fmt: skip


if __name__ == "__main__":
    main()
