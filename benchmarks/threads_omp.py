"""Our parallel loops on TVM's pool vs on torch's OpenMP threads (``RQCOMPILE_PARALLEL``).

Two series per configuration, each configuration (``tvm``: TVM's thread pool, the state
before; ``omp``: our loops on torch's OpenMP threads; ``pool``: the idle-threads-only pool;
both launchers in ``rqcompile/targets/tvm/parallel.py``) in its own process,
the processes alternating round after round (the pools cannot be switched back and forth in
one process without each one's spinning threads disturbing the other's calls):

* **interleaved, 2 threads**: one call of each candidate per round, torch fp32, torch
  dynamic int8, ONNX Runtime int8 (when installed) and one compiled ``nn.Linear`` per preset,
  all at 2 threads (a program that calls torch between our calls);
* **standalone scaling**: each preset's calls back to back at 1 thread, then at 2 threads;
  the ratio is ``time(1) / time(2)``.

One ``nn.Linear`` (no bias), K = N, batch M. The layers are built once by the parent and
saved; every child process loads them with ``rq.load`` (the path users' artifacts take).
Medians of wall time, and process CPU time per call (all threads; at 2 threads a spinning
pool shows as CPU time)::

    python benchmarks/threads_omp.py --k 2048,4096 --m 1,64,256 --rounds 3

writes ``results/threads_omp_<date>.{md,json}``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("tvm", "omp", "pool")


def _artifact(d: Path, k: int, m: int, p: str) -> Path:
    return d / f"k{k}_m{m}_{p.replace(':', '_').replace('+', '_')}"


def build(d: Path, ks: list[int], ms: list[int], presets: list[str]) -> None:
    import torch
    from torch import nn

    import rqcompile as rq

    for k in ks:
        torch.manual_seed(0)
        lin = nn.Sequential(nn.Linear(k, k, bias=False)).eval()
        torch.save(lin.state_dict(), d / f"lin_{k}.pt")
        for m in ms:
            x = torch.randn(m, k)
            for p in presets:
                path = _artifact(d, k, m, p)
                if not path.exists():
                    t0 = time.perf_counter()
                    exe = rq.lower(rq.prepare(lin, (x,), p).eval(), "llvm", example_inputs=(x,))
                    exe.save(path)
                    print(f"built {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)


def _peers(lin, x, threads: int, tmp: Path) -> dict:
    import torch

    from rqcompile.bench.peers import _onnx_matmul, _torch_int8

    fns = {"torch-fp32": lambda: lin(x), "torch-int8": (lambda q: lambda: q(x))(_torch_int8(lin))}
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _onnx_matmul(lin[0].weight.detach().t().numpy(), tmp / "f.onnx")
        quantize_dynamic(str(tmp / "f.onnx"), str(tmp / "q.onnx"), weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(tmp / "q.onnx"), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        fns["ort-int8"] = lambda: sess.run(None, {"X": xn})
    except ImportError:
        pass
    del torch
    return fns


def _clock_pair():
    return time.perf_counter(), time.process_time()


def child(d: Path, k: int, m: int, presets: list[str], budget: float) -> dict:
    import torch
    from torch import nn

    import rqcompile as rq
    from rqcompile.targets.tvm import parallel

    lin = nn.Sequential(nn.Linear(k, k, bias=False)).eval()
    lin.load_state_dict(torch.load(d / f"lin_{k}.pt"))
    x = torch.randn(m, k)
    ours = {p: rq.load(_artifact(d, k, m, p)) for p in presets}
    used = {p: e.backend.parallel for p, e in ours.items()}
    out: dict = {"parallel": used, "interleaved": {}, "standalone": {},
                 "load": os.getloadavg()[0]}  # fmt: skip
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(2)
        fns = _peers(lin, x, 2, Path(tmp))
        for p, e in ours.items():
            e.threads = None  # follow torch: 2
            fns[p] = functools.partial(e, x)
        for f in fns.values():
            f()
        s = {n: ([], []) for n in fns}
        lch = parallel.launcher()
        stats0 = _pool_stats(lch)
        start = time.perf_counter()
        r = 0
        while r < 5 or (time.perf_counter() - start < budget and r < 400):
            for n, f in fns.items():
                w0, c0 = _clock_pair()
                f()
                w1, c1 = _clock_pair()
                s[n][0].append(w1 - w0)
                s[n][1].append(c1 - c0)
            r += 1
        out["interleaved"] = {n: (statistics.median(w), statistics.median(c), len(w))
                              for n, (w, c) in s.items()}  # fmt: skip
        out["pool_interleaved"] = _pool_delta(lch, stats0, r * len(ours))
        # standalone: each preset alone, back to back, 1 then 2 threads
        for p, e in ours.items():
            row = {}
            for t in (1, 2):
                torch.set_num_threads(t)
                e.threads = t
                e(x)
                st0 = _pool_stats(lch)
                w, c = [], []
                start = time.perf_counter()
                while len(w) < 5 or (time.perf_counter() - start < budget / 4 and len(w) < 400):
                    w0, c0 = _clock_pair()
                    e(x)
                    w1, c1 = _clock_pair()
                    w.append(w1 - w0)
                    c.append(c1 - c0)
                row[t] = (statistics.median(w), statistics.median(c), len(w),
                          sorted(w)[len(w) // 10], _pool_delta(lch, st0, len(w)))  # fmt: skip
            out["standalone"][p] = row
    out["launches"] = lch.launches() if lch is not None else 0
    return out


def _pool_stats(lch) -> tuple | None:
    if lch is None or lch.kind != "pool":
        return None
    return lch.wait_seconds(), lch.worker_chunks(), lch.team_launches()


def _pool_delta(lch, before: tuple | None, calls: int) -> dict | None:
    """Per call of ours: time the caller waited for workers' claimed chunks, and chunks run
    by workers per parallel loop (of 4 x threads)."""
    now = _pool_stats(lch)
    if now is None or before is None or calls == 0:
        return None
    loops = max(1, now[2] - before[2])
    return {"wait_us_per_call": (now[0] - before[0]) / calls * 1e6,
            "worker_chunks_per_loop": (now[1] - before[1]) / loops}  # fmt: skip


def _fmt(us: float) -> str:
    return f"{us:,.0f}"


def report(data: dict, cmd: str) -> str:
    ks, ms, presets = data["k"], data["m"], data["presets"]
    configs = tuple(data.get("configs", CONFIGS))
    res = data["results"]  # res[config][f"{k}x{m}"] = list of child outputs (rounds)
    peers = [n for n in next(iter(res["tvm"].values()))[0]["interleaved"] if n not in presets]
    lines = [
        "# Our parallel loops: TVM's pool vs torch's OpenMP threads vs the idle-threads pool",
        "",
        f"`{cmd}`; {data['date']}, {data['machine']}, load average {data['load_start']:.1f} at "
        f"the start and {data['load_end']:.1f} at the end (the machine was shared with other "
        "jobs: read ratios, not absolute times).",
        "",
        "`RQCOMPILE_PARALLEL`: `tvm` is TVM's thread pool (the state before), `omp` our loops "
        "on torch's OpenMP threads, `pool` the idle-threads-only pool (the default; both in "
        "`rqcompile/targets/tvm/parallel.py`). "
        "Each configuration in its own process, the processes alternating; the layers are "
        "loaded from saved artifacts (`rq.load`). Cells: median wall time per call in µs "
        "over all rounds' samples (median of per-round medians for the ratios), and in "
        "brackets the median process CPU time per call (all threads).",
        "",
        "Load average (1 min) when each configuration's processes started, median over "
        "rounds: " + ", ".join(f"`{c}` {statistics.median(r['load'] for v in res[c].values() for r in v):.1f}" for c in configs)  # noqa: E501
        + ".",
        "",
        "## Interleaved with torch and ONNX Runtime, 2 threads",
        "",
        "| K, M | config | " + " | ".join(peers + presets) + " |",
        "|" + " --- |" * (len(peers) + len(presets) + 2),
    ]

    def med(rounds, series, name, idx):
        return statistics.median(r[series][name][idx] for r in rounds) * 1e6

    for k in ks:
        for m in ms:
            for c in configs:
                rounds = res[c][f"{k}x{m}"]
                cells = [f"{_fmt(med(rounds, 'interleaved', n, 0))} "
                         f"({_fmt(med(rounds, 'interleaved', n, 1))})" for n in peers + presets]
                lines.append(f"| {k}, {m} | {c} | " + " | ".join(cells) + " |")
    lines += ["", "Our layers, " + " and ".join(f"`tvm` time / `{c}` time" for c in configs[1:])
              + " (interleaved, wall; > 1: the launcher is faster than TVM's pool):", "",
              "| K, M | " + " | ".join(f"{p} {c}" for p in presets for c in configs[1:]) + " |",
              "|" + " --- |" * (len(presets) * (len(configs) - 1) + 1)]  # fmt: skip
    for k in ks:
        for m in ms:
            base = {p: med(res["tvm"][f"{k}x{m}"], "interleaved", p, 0) for p in presets}
            cells = [f"{base[p] / med(res[c][f'{k}x{m}'], 'interleaved', p, 0):.2f}x"
                     for p in presets for c in configs[1:]]  # fmt: skip
            lines.append(f"| {k}, {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Standalone, 1 → 2 threads", "",
              "Each preset's calls back to back; median µs at 1 thread / at 2 threads (CPU µs "
              "at 2 threads in brackets), the scaling `time(1) / time(2)` of the medians "
              "(goal: ≥ 1.7x at M ≥ 64), and in square brackets the same ratio of the 10th "
              "percentiles (the calls the other jobs on the machine disturbed least).", "",
              "| K, M | config | " + " | ".join(presets) + " |",
              "|" + " --- |" * (len(presets) + 2)]  # fmt: skip
    for k in ks:
        for m in ms:
            for c in configs:
                rounds = res[c][f"{k}x{m}"]
                cells = []
                for p in presets:
                    t1 = statistics.median(r["standalone"][p]["1"][0] for r in rounds) * 1e6
                    t2 = statistics.median(r["standalone"][p]["2"][0] for r in rounds) * 1e6
                    c2 = statistics.median(r["standalone"][p]["2"][1] for r in rounds) * 1e6
                    q1 = statistics.median(r["standalone"][p]["1"][3] for r in rounds)
                    q2 = statistics.median(r["standalone"][p]["2"][3] for r in rounds)
                    cells.append(f"{_fmt(t1)} / {_fmt(t2)} ({_fmt(c2)}): **{t1 / t2:.2f}x** "
                                 f"[{q1 / q2:.2f}x]")
                lines.append(f"| {k}, {m} | {c} | " + " | ".join(cells) + " |")
    lines += ["", "## `pool`: what the launcher itself cost", "",
              "Per call of ours, median over rounds: the time the calling thread waited for "
              "chunks a worker had claimed and not finished (the launcher's only wait; a "
              "worker that has not started is never waited for), and how many of a parallel "
              "loop's 8 chunks (4 per thread) the worker ran: 0 means the call ran on its "
              "caller alone.", "",
              "| K, M | series | " + " | ".join(presets) + " |",
              "|" + " --- |" * (len(presets) + 2)]  # fmt: skip
    for k in ks:
        for m in ms:
            if "pool" not in res:
                continue
            rounds = res["pool"][f"{k}x{m}"]
            vals = [r["pool_interleaved"] for r in rounds if r.get("pool_interleaved")]
            if vals:
                w = statistics.median(v["wait_us_per_call"] for v in vals)
                ch = statistics.median(v["worker_chunks_per_loop"] for v in vals)
                lines.append(f"| {k}, {m} | interleaved (all presets) | wait {w:,.0f} µs/call, "
                             f"worker {ch:.1f} chunks/loop |" + " |" * (len(presets) - 1))
            cells = []
            for p in presets:
                vals = [r["standalone"][p]["2"][4] for r in rounds
                        if len(r["standalone"][p]["2"]) > 4 and r["standalone"][p]["2"][4]]
                if not vals:
                    cells.append("")
                    continue
                w = statistics.median(v["wait_us_per_call"] for v in vals)
                ch = statistics.median(v["worker_chunks_per_loop"] for v in vals)
                cells.append(f"wait {w:,.0f} µs, worker {ch:.1f}/8")
            lines.append(f"| {k}, {m} | standalone, 2 threads | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", type=Path)
    ap.add_argument("--k", default="2048,4096")
    ap.add_argument("--m", default="1,64,256")
    ap.add_argument("--presets", default="A8W8,A4W4,A1W1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per series per shape")
    ap.add_argument("--artifacts", type=Path, help="folder for the built layers (kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default=None)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="subset of tvm,omp,pool")
    a = ap.parse_args()
    ks = [int(v) for v in a.k.split(",")]
    ms = [int(v) for v in a.m.split(",")]
    presets = a.presets.split(",")
    if a.child:
        res = {f"{k}x{m}": child(a.child, k, m, presets, a.budget) for k in ks for m in ms}
        print(json.dumps(res))
        return 0
    d = a.artifacts or Path(tempfile.mkdtemp(prefix="rq-threads-omp-"))
    d.mkdir(parents=True, exist_ok=True)
    build(d, ks, ms, presets)
    load_start = os.getloadavg()[0]
    configs = [c for c in CONFIGS if c in a.configs.split(",")]
    results: dict = {c: {} for c in configs}
    for r in range(a.rounds):
        for c in configs:
            env = {**os.environ, "RQCOMPILE_PARALLEL": c,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            p = subprocess.run(
                [sys.executable, __file__, "--child", str(d), "--k", a.k, "--m", a.m,
                 "--presets", a.presets, "--budget", str(a.budget)],
                env=env, capture_output=True, text=True)  # fmt: skip
            if p.returncode != 0:
                print(p.stderr, file=sys.stderr)
                return 1
            got = json.loads(p.stdout.strip().splitlines()[-1])
            for shape, v in got.items():
                v = json.loads(json.dumps(v))
                results[c].setdefault(shape, []).append(v)
                print(f"round {r} {c} {shape}: " + ", ".join(
                    f"{n} {t[0] * 1e6:,.0f}us" for n, t in v["interleaved"].items())
                    + f" | parallel {set(v['parallel'].values())}", flush=True)  # fmt: skip
    date = datetime.datetime.now(datetime.timezone.utc)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    data = {"configs": configs, "date": f"{date:%Y-%m-%d %H:%M} UTC",
            "machine": f"{os.cpu_count()} cores, {cpu}",
            "load_start": load_start, "load_end": os.getloadavg()[0], "k": ks, "m": ms,
            "presets": presets, "rounds": a.rounds, "budget": a.budget,
            "results": results}  # fmt: skip
    only = "" if len(configs) == len(CONFIGS) else f" --configs {','.join(configs)}"
    cmd = ("python benchmarks/threads_omp.py --k " + a.k + " --m " + a.m + " --presets "
           + a.presets + f" --rounds {a.rounds} --budget {a.budget}" + only)  # fmt: skip
    text = report(data, cmd)
    a.out.mkdir(parents=True, exist_ok=True)
    name = a.name or f"threads_omp_{date:%Y-%m-%d}"
    (a.out / f"{name}.json").write_text(json.dumps(data, indent=1))
    (a.out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
