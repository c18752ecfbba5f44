"""AMX-INT8 (``int_matmul.amx``) against our VNNI row and the int8 peers: one ``nn.Linear``
(no bias), K = N, A8W8 lowered with each row forced, interleaved medians per call::

    python benchmarks/amx_gemm.py                      # K=N 1024,2048,4096; M 1,16,64,256
    python benchmarks/amx_gemm.py --threads 1,2 --out benchmarks/results/amx_gemm_DATE.md

Candidates: ``amx`` and ``avx512_vnni`` (ours, the same quantized layer with the
``int_matmul`` row forced; the AMX row is forced below its threshold too, so the table shows
where it stops paying), ``torch-int8-dyn`` (``torch.ao`` dynamic quantization, fbgemm) and
``ort-int8`` (ONNX Runtime ``quantize_dynamic``, MLAS; AMX where the CPU has it). Clock:
CPU time of the process at 1 thread (other processes on the machine do not count), wall
time at 2. Our two rows must give the same output to the bit (checked). Needs a host with
AMX-INT8 and AVX-512 VNNI; ORT from ``onnxruntime`` + ``onnx`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import rqcompile as rq
from rqcompile.bench import peers as P
from rqcompile.ir.printer import print_module
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.passes.ir import PackWeights, SelectKernels
from rqcompile.targets.tvm.adapter import host_llvm_target, tvm_version
from rqcompile.targets.tvm.cpu_features import host_features
from rqcompile.targets.tvm.kernels import table as _table
from rqcompile.targets.tvm.pipelines import tvm_target
from rqcompile.targets.tvm.schedules.integer import kernel_features

ROWS = ["amx", "avx512_vnni"]


def _ours(ir: rq.ir.Module, row: str) -> rq.CompiledModule:
    """The layer built for this host with its ``int_matmul`` forced to ``row`` (the other ops
    keep the host's rows: ``force`` alone would give them the generic ones)."""
    feats = kernel_features(tvm_target(rq.Target.parse("llvm")))
    select = SelectKernels(features=feats, force=(f"int_matmul:{row}",))
    forced = PassManager([select, PackWeights()]).run(ir, PassContext())
    if f'rq.kernel = "int_matmul.{row}"' not in print_module(forced):
        raise SystemExit(f"int_matmul.{row}: the layer does not take this row")
    with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
        return rq.build(forced, "llvm")


def _peers(lin: torch.nn.Module, tmp: Path) -> dict[str, object]:
    out: dict[str, object] = {"torch-int8-dyn": P._torch_int8(lin)}
    if not P.missing_packages("ort-int8"):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        f32, i8 = tmp / "linear.onnx", tmp / "linear_int8.onnx"
        P._onnx_matmul(lin[0].weight.detach().t().numpy(), f32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(f32), str(i8), weight_type=QuantType.QInt8)
        out["ort-int8"] = P._OrtPeer(i8, "X")
    else:
        print("  ort-int8: onnxruntime/onnx not importable, skipped", flush=True)
    return out


def _time(fns: dict, *, clock, budget_s: float, min_rounds: int = 7) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
        fn()
    start = time.perf_counter()
    for r in range(400):
        if r >= min_rounds and time.perf_counter() - start > budget_s * len(fns):
            break
        for name, fn in fns.items():
            t0 = clock()
            fn()
            samples[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def run(
    ks: list[int], ms: list[int], threads: list[int], budget_s: float, preset: str = "A8W8"
) -> list[dict]:
    _table.AMX_MIN_ROWS = 1  # the row's threshold: force AMX below it too, to measure it
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for k in ks:
            torch.manual_seed(0)
            lin = torch.nn.Sequential(torch.nn.Linear(k, k, bias=False)).eval()
            qat = rq.prepare(lin, (torch.randn(max(ms), k),), preset).eval()
            peers = _peers(lin, Path(d))
            for m in ms:
                x = torch.randn(m, k)
                ir = rq.convert(qat, example_inputs=(x,))
                ours = {r: _ours(ir, r) for r in ROWS}
                ys = [exe(x) for exe in ours.values()]
                assert all(torch.equal(ys[0], y) for y in ys), "rows disagree"
                for t in threads:
                    torch.set_num_threads(t)
                    fns = {r: (lambda e=e, x=x: e(x)) for r, e in ours.items()}
                    dyn = peers["torch-int8-dyn"]
                    fns["torch-int8-dyn"] = lambda dyn=dyn, x=x: dyn(x)
                    if "ort-int8" in peers:
                        fns["ort-int8"] = peers["ort-int8"].fn(t, x)
                    clock = time.process_time if t == 1 else time.perf_counter
                    res = _time(fns, clock=clock, budget_s=budget_s)
                    rows.append({"k": k, "m": m, "threads": t, **res})
                    print(
                        "  "
                        + "  ".join(
                            [f"K=N={k} M={m} t={t}"]
                            + [f"{n} {v * 1e6:,.0f}us" for n, v in res.items()]
                        ),
                        flush=True,
                    )
    return rows


def markdown(rows: list[dict], cmd: str) -> str:
    names = [n for n in rows[0] if n not in ("k", "m", "threads")]
    tgt = host_llvm_target().export()
    out = ["# AMX-INT8 vs VNNI vs int8 peers: one `nn.Linear` (no bias), K = N", "",
           f"`{cmd}`", "",
           f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
           f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
           f"cores, LLVM mcpu `{tgt.get('mcpu')}` mattr {list(tgt.get('mattr', []))}",
           f"- ISA features: {', '.join(sorted(host_features()))}",
           f"- versions: torch {torch.__version__}, tvm {tvm_version()}, "
           + ", ".join(f"{p} {v}" for p, v in P._versions().items() if p in ("onnxruntime",)),
           "- clock: CPU time of the process at 1 thread, wall time at 2; each cell the median "
           "time per call in µs, interleaved rounds",
           "- **amx / vnni**: our VNNI time / our AMX time; **amx / best**: the best peer's "
           "time / our AMX time (> 1: ours faster)", ""]  # fmt: skip
    for t in sorted({r["threads"] for r in rows}):
        out += [f"## {t} thread{'s' if t > 1 else ''}", "",
                "| K=N | M | " + " | ".join(names) + " | amx / vnni | amx / best peer |",
                "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |"]  # fmt: skip
        for r in (r for r in rows if r["threads"] == t):
            best = min(r[n] for n in names if n not in ROWS)
            vnni = r[ROWS[1]]
            cells = " | ".join(f"{r[n] * 1e6:,.0f}" for n in names)
            out.append(f"| {r['k']} | {r['m']} | {cells} | {vnni / r['amx']:.2f}x "
                       f"| {best / r['amx']:.2f}x |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", default="1024,2048,4096", help="K = N values")
    p.add_argument("--m", default="1,16,64,256", help="M values")
    p.add_argument("--threads", default="1")
    p.add_argument("--budget", type=float, default=0.3, help="seconds per candidate and shape")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--preset", default="A8W8")
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help="our int_matmul rows to force: amx first, the VNNI row to compare second",
    )
    a = p.parse_args(argv)
    if not {"amx_tile", "amx_int8", "avx512_vnni"} <= host_features():
        raise SystemExit("this host lacks AMX-INT8 or AVX-512 VNNI")
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    ROWS[:] = a.rows.split(",")
    rows = run(ints(a.k), ints(a.m), ints(a.threads), a.budget, a.preset)
    cmd = "python benchmarks/amx_gemm.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, cmd.strip())
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
