"""TVM thread-pool settings for our kernels called between torch and ONNX Runtime calls.

Each configuration runs in its own process (TVM reads its pool variables once), the
configurations alternate round after round, and in each process one ``nn.Linear`` per preset
is called interleaved with torch fp32 and ORT int8 (when installed) at the same thread count;
medians of wall time::

    python benchmarks/threads_coexist.py --rounds 3            # writes results/threads_coexist_<date>.md

Configurations: ``tvm-default`` (pinned workers, 300,000-yield spin, no serial threshold: the
state before issue 19), ``default`` (rqcompile's TVM-pool settings: unpinned, TVM's spin),
``short-spin`` (unpinned, 2,000-yield spin), all three on TVM's pool
(``RQCOMPILE_PARALLEL=tvm``); ``pool`` (rqcompile's default launcher since, see
``threads_omp.py``), ``pool-omp-passive`` (the same with ``OMP_WAIT_POLICY=passive``, so
torch's OpenMP threads sleep after each op instead of spinning) and ``serial``
(``exe.threads = 1``); ``--configs`` picks some. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tvm-default": {"TVM_BIND_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "300000",
                    "RQCOMPILE_SERIAL_BELOW": "0", "RQCOMPILE_PARALLEL": "tvm"},
    "default": {"RQCOMPILE_SERIAL_BELOW": "0", "RQCOMPILE_PARALLEL": "tvm"},
    "short-spin": {"TVM_THREAD_POOL_SPIN_COUNT": "2000", "RQCOMPILE_SERIAL_BELOW": "0",
                   "RQCOMPILE_PARALLEL": "tvm"},
    "pool": {"RQCOMPILE_SERIAL_BELOW": "0", "RQCOMPILE_PARALLEL": "pool"},
    # torch's (GNU) OpenMP threads sleep after each op instead of spinning on the cores ours
    # need; read by libgomp at start-up, so it must be set before the process starts
    "pool-omp-passive": {"RQCOMPILE_SERIAL_BELOW": "0", "RQCOMPILE_PARALLEL": "pool",
                         "OMP_WAIT_POLICY": "passive"},
    "serial": {"RQ_SERIAL": "1"},
}


def child(k: int, m: int, threads: int, presets: list[str], repeats: int) -> dict:
    import torch
    from torch import nn

    import rqcompile as rq

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(k, k, bias=False)).eval()
    x = torch.randn(m, k)
    fns = {"torch-fp32": lambda: lin(x)}
    try:
        import tempfile

        import onnxruntime as ort

        from rqcompile.bench.peers import _onnx_matmul
        from onnxruntime.quantization import QuantType, quantize_dynamic

        d = tempfile.mkdtemp()
        _onnx_matmul(lin[0].weight.detach().t().numpy(), Path(d) / "f.onnx")
        quantize_dynamic(str(Path(d) / "f.onnx"), str(Path(d) / "q.onnx"),
                         weight_type=QuantType.QInt8)  # fmt: skip
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(Path(d) / "q.onnx"), so,
                                    providers=["CPUExecutionProvider"])  # fmt: skip
        fns["ort-int8"] = lambda: sess.run(None, {"X": x.numpy()})
    except ImportError:
        pass
    for p in presets:
        exe = rq.lower(rq.prepare(lin, (x,), p).eval(), "llvm", example_inputs=(x,))
        if os.environ.get("RQ_SERIAL"):
            exe.threads = 1
        fns[p] = lambda exe=exe: exe(x)
    s: dict[str, list[float]] = {n: [] for n in fns}
    with torch.no_grad():
        for f in fns.values():
            f()
        for _ in range(repeats):
            for n, f in fns.items():
                t0 = time.perf_counter()
                f()
                s[n].append(time.perf_counter() - t0)
    return {n: v for n, v in s.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default="A8W8,A4W4,A1W1")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    a = ap.parse_args()
    presets = a.presets.split(",")
    if a.child:
        print(json.dumps(child(a.k, a.m, a.threads, presets, a.repeats)))
        return 0
    configs = {c: CONFIGS[c] for c in a.configs.split(",")}
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in configs}
    for r in range(a.rounds):
        for c, extra in configs.items():
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            env = {**os.environ, **extra, "PYTHONPATH": path}
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--k", str(a.k), "--m", str(a.m),
                 "--threads", str(a.threads), "--presets", a.presets,
                 "--repeats", str(a.repeats)],
                env=env, capture_output=True, text=True, check=True)  # fmt: skip
            got = json.loads(out.stdout.strip().splitlines()[-1])
            for n, v in got.items():
                samples[c].setdefault(n, []).extend(v)
            print(f"round {r} {c}: " + ", ".join(
                f"{n} {statistics.median(v) * 1e6:.0f}us" for n, v in got.items()), flush=True)
    date = datetime.datetime.now(datetime.timezone.utc)
    names = list(next(iter(samples.values())))
    lines = [f"# TVM pool settings between torch and ORT calls, K = N = {a.k}, M = {a.m}, "
             f"{a.threads} threads", "",
             f"`python benchmarks/threads_coexist.py --k {a.k} --m {a.m} --threads "
             f"{a.threads} --rounds {a.rounds} --repeats {a.repeats} --configs {a.configs}`; "
             f"{date:%Y-%m-%d %H:%M} "
             f"UTC, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end. "
             "Median wall time per call (µs) over all rounds; each configuration in its own "
             "process, configurations alternating.", "",
             "| configuration | " + " | ".join(names) + " |",
             "|" + " --- |" * (len(names) + 1)]  # fmt: skip
    for c, s in samples.items():
        lines.append(f"| {c} | " + " | ".join(
            f"{statistics.median(s[n]) * 1e6:,.0f}" for n in names) + " |")  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"threads_coexist_{date:%Y-%m-%d}_k{a.k}_m{a.m}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
