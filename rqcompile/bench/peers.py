"""One ``nn.Linear`` (no bias) against the peers a user would pick, in one process.

``main(argv)`` (``rqcompile bench --peers``, ``python benchmarks/peers.py``) times, per shape
``K = N`` and batch ``M`` and per thread count,

* **peers**: torch fp32 eager, ``torch.compile`` (inductor), torch dynamic int8
  (``torch.ao.quantization.quantize_dynamic``, fbgemm), torchao int8 dynamic
  (``Int8DynamicActivationInt8WeightConfig``), ONNX Runtime int8 (``quantize_dynamic`` of the
  ONNX ``MatMul``) and ONNX Runtime ``MatMulNBits`` 4-bit, block 128, accuracy levels 0
  (fp32 compute) and 4 (int8 compute);
* **ours**: the lowered layer of each preset (A8W8, A4W4, A2W2, A1W1, A4W4+2:4, W4), checked
  against the ``reference`` target before it is timed,

with the same thread count for every candidate (``torch.set_num_threads``, ORT's
``intra_op_num_threads``, the compiled model's ``threads``). Two series per thread count:
**interleaved** (one call of each candidate per round, round after round: the candidates
share caches and thread pools as in a program that calls them all) and **standalone** (each
candidate's calls back to back after a pause and a warm-up: warm caches, its own pool alone).
The pause (``timing.SETTLE_S``) is what makes it alone: ONNX Runtime's intra-op pool spins
for ~40 ms after each ``run`` (``benchmarks/ort_spin.py``), so without it the next
candidate's first ~40 ms ran beside a spinning thread; at K = N = 1024, M = 64 that was
most of a cell's calls. Each cell
is the median; each preset's ratio is ``best peer time / our time`` (> 1: ours is faster)
against the fastest peer *of the same series and shape*.

The peers are an optional extra (``pip install "rqcompile[bench]"``: onnxruntime, onnx,
torchao); a peer whose package is missing is left out and the report says so. The ONNX
graphs are built with ``onnx.helper`` (``MatMul`` with the weight as an initializer, the
graph ``torch.onnx.export`` makes of a bias-free ``nn.Linear``), so no exporter is needed.
Results go to ``--out`` (default ``./rq-bench``), never into the repository by default.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rqcompile.bench import targets
from rqcompile.bench.timing import settle

__all__ = ["PEERS", "PRESETS", "PeerRow", "main", "markdown", "run"]

PRESETS = ("A8W8", "A4W4", "A2W2", "A1W1", "A4W4+2:4", "W4", "A8W4")
#: ``--decode``: batch-1/8 decode (issue 19): weight-only and integer presets, K x N of square
#: layers and GPT-2-small's (c_attn 768x2304, c_fc 768x3072, c_proj 3072x768)
DECODE_PRESETS = ("W4", "W8", "A8W8", "A4W4", "A1W1")
DECODE_PEERS = ("torch-fp32", "torch-int8-dyn", "ort-int8", "ort-nbits4-acc0", "ort-nbits4-acc4")
DECODE_SHAPES = ((2048, 2048), (4096, 4096), (768, 2304), (768, 3072), (3072, 768))
DECODE_M = (1, 8)
PEERS = ("torch-fp32", "torch-compile", "torch-int8-dyn", "torchao-int8-dyn", "ort-int8",
         "ort-nbits4-acc0", "ort-nbits4-acc4")  # fmt: skip
_NEEDS = {"torchao-int8-dyn": ("torchao",), "ort-int8": ("onnxruntime", "onnx"),
          "ort-nbits4-acc0": ("onnxruntime", "onnx"), "ort-nbits4-acc4": ("onnxruntime", "onnx")}  # fmt: skip
_FULL_K = (1024, 2048, 4096)
_FULL_M = (1, 64, 256)
_QUICK_K = (1024,)
_QUICK_M = (1, 64)
SERIES = ("interleaved", "standalone")
#: standalone series: seconds of warm-up calls (at least 2) after the pause
#: (``timing.settle``), which wake the candidate's pool and warm its caches
WARM_S = 0.02


@dataclass(frozen=True)
class PeerRow:
    """One candidate at one shape, thread count and series; ``seconds`` is the median."""

    threads: int
    series: str
    k: int
    n: int
    m: int
    name: str
    seconds: float
    spread: float
    repeats: int
    weight_bytes: int = 0  # bytes of weights the candidate holds (ours: the bound constants)


def missing_packages(peer: str) -> list[str]:
    """The packages ``peer`` needs that are not installed (empty: it can run)."""
    return [p for p in _NEEDS.get(peer, ()) if importlib.util.find_spec(p) is None]


# ---- peers ---------------------------------------------------------------------------------


def _torch_int8(lin: Any) -> Any:
    import torch
    from torch import nn

    with warnings.catch_warnings():  # torch deprecates the eager API in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(lin, {nn.Linear}, dtype=torch.qint8)


def _torchao_int8(lin: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import quantize_

        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig as cfg
            config = cfg()
        except ImportError:  # torchao < 0.10
            from torchao.quantization import int8_dynamic_activation_int8_weight
            config = int8_dynamic_activation_int8_weight()
        m = copy.deepcopy(lin)
        quantize_(m, config)
    return m


def _onnx_matmul(w_kn: Any, path: Path) -> None:
    """``Y = X @ W`` with ``W [K, N]`` an initializer and the batch dimension symbolic."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w_kn.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(np.ascontiguousarray(w_kn, dtype=np.float32), "W")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.save(model, str(path))


def _onnx_nbits(w_nk: Any, path: Path, *, block: int = 128, accuracy_level: int = 0) -> None:
    """``com.microsoft.MatMulNBits``: 4-bit symmetric codes (zero point 8) per block of K."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n, k = w_nk.shape
    nb = (k + block - 1) // block
    w = np.zeros((n, nb * block), np.float32)
    w[:, :k] = w_nk
    wb = w.reshape(n, nb, block)
    scale = np.abs(wb).max(axis=2) / 7.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(wb / scale[:, :, None]) + 8, 0, 15).astype(np.uint8)
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)  # low nibble first
    node = helper.make_node(
        "MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
        K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy_level)  # fmt: skip
    graph = helper.make_graph(
        [node], "linear_nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(packed, "B"),
         numpy_helper.from_array(scale.astype(np.float32).reshape(-1), "scales")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = min(model.ir_version, 9)
    onnx.save(model, str(path))


class _OrtPeer:
    """An ONNX Runtime session per thread count (ORT fixes its pool at session creation)."""

    def __init__(self, path: Path, input_name: str) -> None:
        self.path, self.input_name = path, input_name
        self._sessions: dict[int, Any] = {}

    def session(self, threads: int) -> Any:
        import onnxruntime as ort

        if threads not in self._sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self._sessions[threads] = ort.InferenceSession(
                str(self.path), so, providers=["CPUExecutionProvider"])  # fmt: skip
        return self._sessions[threads]

    def fn(self, threads: int, x: Any) -> Callable[[], Any]:
        sess, feed = self.session(threads), {self.input_name: x.numpy()}
        return lambda: sess.run(None, feed)


def _build_peers(lin: Any, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Each available peer as ``(threads, x) -> callable``; missing ones are logged."""
    import torch

    out: dict[str, Any] = {}
    w = lin[0].weight.detach()
    out["torch-fp32"] = lambda t, x: (lambda: lin(x))
    compiled = torch.compile(lin)
    out["torch-compile"] = lambda t, x: (lambda: compiled(x))
    dyn = _torch_int8(lin)
    out["torch-int8-dyn"] = lambda t, x: (lambda: dyn(x))
    if not missing_packages("torchao-int8-dyn"):
        ao = _torchao_int8(lin)
        out["torchao-int8-dyn"] = lambda t, x: (lambda: ao(x))
    if not missing_packages("ort-int8"):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        f32 = tmp / "linear.onnx"
        _onnx_matmul(w.t().numpy(), f32)
        i8 = tmp / "linear_int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(f32), str(i8), weight_type=QuantType.QInt8)
        out["ort-int8"] = _OrtPeer(i8, "X").fn
        for level in (0, 4):
            p = tmp / f"linear_nbits4_acc{level}.onnx"
            _onnx_nbits(w.numpy(), p, accuracy_level=level)
            out[f"ort-nbits4-acc{level}"] = _OrtPeer(p, "A").fn
    return out


# ---- timing --------------------------------------------------------------------------------


def _time(fns: dict[str, Callable[[], Any]], *, series: str, budget_s: float, clock: Callable,
          min_repeats: int = 5, max_repeats: int = 200) -> dict[str, tuple[float, float, int]]:  # fmt: skip
    """Median seconds, interquartile spread and repeats of each callable."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up: first calls allocate, compile, fault pages in
        fn()
        fn()
    if series == "interleaved":
        start = time.perf_counter()
        for r in range(max_repeats):
            if r >= min_repeats and time.perf_counter() - start > budget_s * len(fns):
                break
            for name, fn in fns.items():
                t0 = clock()
                fn()
                samples[name].append(clock() - t0)
    else:
        for name, fn in fns.items():
            settle()  # the previous candidate's pool threads stop spinning
            start = time.perf_counter()
            for r in range(max_repeats):  # wake this candidate's pool, warm its caches
                fn()
                if r >= 1 and time.perf_counter() - start > WARM_S:
                    break
            start = time.perf_counter()
            for r in range(max_repeats):
                if r >= min_repeats and time.perf_counter() - start > budget_s:
                    break
                t0 = clock()
                fn()
                samples[name].append(clock() - t0)
    out = {}
    for name, s in samples.items():
        med = statistics.median(s)
        q = statistics.quantiles(s, n=4) if len(s) >= 4 else [min(s), med, max(s)]
        out[name] = (med, (q[2] - q[0]) / med if med > 0 else 0.0, len(s))
    return out


def _set_threads(n: int) -> None:
    """torch's threads; our compiled models follow ``torch.get_num_threads()`` per call."""
    import torch

    torch.set_num_threads(n)


def run(
    ks: Sequence[int | tuple[int, int]],
    ms: Sequence[int],
    threads: Sequence[int],
    presets: Sequence[str] = PRESETS,
    *,
    peers: Sequence[str] = PEERS,
    series: Sequence[str] = SERIES,
    budget_s: float = 0.3,
    clock: str | None = None,
    log: Callable[[str], None] = print,
    seed: int = 0,
    e2e: bool = False,
) -> dict[str, Any]:
    """Time every candidate at every shape, thread count and series; returns the JSON data.

    ``ks``: ``K = N`` sizes, or ``(K, N)`` pairs. ``e2e``: also the demo char transformer
    (batch 32 x 64) in A1W1 against torch fp32 and dynamic int8 at each thread count and
    series (the end-to-end target of the targets table)."""
    import torch
    from torch import nn

    import rqcompile as rq
    from rqcompile.bench.layers import check_against_reference
    from rqcompile.bench.timing import CLOCKS

    threads = sorted(set(threads))
    skipped = {p: f"needs {', '.join(missing_packages(p))} (pip install 'rqcompile[bench]')"
               for p in peers if missing_packages(p)}  # fmt: skip
    for p, why in skipped.items():
        log(f"  {p}: left out, {why}")
    rows: list[PeerRow] = []
    build_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rq-peers-") as d, torch.no_grad():
        for shape in ks:
            k, n = shape if isinstance(shape, tuple) else (shape, shape)
            torch.manual_seed(seed)
            lin = nn.Sequential(nn.Linear(k, n, bias=False)).eval()
            made = _build_peers(lin, Path(d), log)
            made = {p: f for p, f in made.items() if p in peers}
            qats = {p: rq.prepare(lin, (torch.randn(max(ms), k),), p).eval() for p in presets}
            wbytes = {p: _peer_weight_bytes(p, k, n) for p in made}
            for m in ms:
                x = torch.randn(m, k)
                exes = {}
                for p, qat in qats.items():
                    t0 = time.perf_counter()
                    ir = rq.convert(qat, example_inputs=(x,))
                    exe = rq.build(ir, target="llvm")
                    build_s[f"{p} K={k} N={n} M={m}"] = time.perf_counter() - t0
                    check_against_reference(ir, exe, (x,), f"{p} K={k} N={n} M={m}")
                    exes[p] = exe
                    wbytes[p] = sum(ir.constant(c).numel() * ir.constant(c).element_size()
                                    for c in ir.constants)  # fmt: skip
                for t in threads:
                    _set_threads(t)
                    fns = {p: make(t, x) for p, make in made.items()}
                    fns.update({p: (lambda e=e: e(x)) for p, e in exes.items()})
                    clk = clock or ("cpu" if t == 1 else "wall")
                    for s in series:
                        stats = _time(fns, series=s, budget_s=budget_s, clock=CLOCKS[clk])
                        for name, (med, spread, reps) in stats.items():
                            rows.append(PeerRow(t, s, k, n, m, name, med, spread, reps,
                                                wbytes.get(name, 0)))  # fmt: skip
                        log("  " + _line(t, s, k, n, m, stats, presets))
    e2e_rows = []
    if e2e:
        from rqcompile.bench.model import bench_e2e

        for t in threads:
            _set_threads(t)
            for s in series:
                for r in bench_e2e(["A1W1"], batch=(32, 64), budget_s=budget_s * 10,
                                   clock=clock or ("cpu" if t == 1 else "wall"),
                                   standalone=s == "standalone",
                                   log=lambda m, t=t, s=s: log(f"  {t} thr {s} {m.strip()}")):  # fmt: skip
                    e2e_rows.append({"threads": t, "series": s, **r})
    return {"rows": [asdict(r) for r in rows], "skipped": skipped, "build_s": build_s,
            "presets": list(presets), "peers": [p for p in peers if p not in skipped],
            "e2e": e2e_rows}  # fmt: skip


def _peer_weight_bytes(peer: str, k: int, n: int) -> int:
    """Weight bytes a peer reads per call: fp32 4 per weight, int8 1, 4-bit ½ plus one
    float scale per block of 128 (MatMulNBits), int8 plus a float scale per column."""
    if peer.startswith("ort-nbits4"):
        return k * n // 2 + 4 * n * (-(-k // 128))
    if "int8" in peer:
        return k * n + 4 * n
    return 4 * k * n


def _line(t: int, s: str, k: int, n: int, m: int, stats: dict,
          presets: Sequence[str]) -> str:  # fmt: skip
    peer = {n: v[0] for n, v in stats.items() if n not in presets}
    best = min(peer, key=peer.get) if peer else None
    parts = [f"{n} {v[0] * 1e6:.0f}us" for n, v in stats.items()]
    if best:
        parts.append(f"best peer {best}")
    return f"{t} thr {s} K={k} N={n} M={m}: " + ", ".join(parts)


# ---- report --------------------------------------------------------------------------------


def markdown(data: dict[str, Any], cmd: str) -> str:
    """The report: header (machine, date, threads), then one table per thread count and series."""
    env = data["env"]
    presets, rows = data["presets"], [PeerRow(**r) for r in data["rows"]]
    out = [
        "# rqcompile vs peers: one `nn.Linear` (no bias), K inputs x N outputs",
        "",
        f"`{cmd}`",
        "",
        f"- date: {env['date']}",
        f"- machine: {env['cpu']}, {env['cores']} logical cores, LLVM mcpu `{env['mcpu']}`",
        f"- ISA features: {', '.join(env['features'])}",
        f"- versions: torch {env['torch']}, tvm {env['tvm']}, "
        + ", ".join(f"{k} {v}" for k, v in env.get("peers", {}).items()),
        f"- threads: {', '.join(str(t) for t in env['threads'])} (the same for every "
        "candidate); clock: CPU time of the process at 1 thread, wall time above",
        "- each cell: median time per call in µs; **xbest**: best peer time / our time "
        "(> 1: ours faster) against the fastest peer of the same shape, thread count and series",
    ]
    for p, why in data.get("skipped", {}).items():
        out.append(f"- left out: {p} ({why})")
    out.append("")
    peers = [p for p in data["peers"]]
    for t in sorted({r.threads for r in rows}):
        for s in SERIES:
            sel = [r for r in rows if r.threads == t and r.series == s]
            if not sel:
                continue
            out += [f"## {t} thread{'s' if t > 1 else ''}, {s}", ""]
            head = ["K", "N", "M", *peers, "best peer", *[f"{p} (xbest)" for p in presets]]
            out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            for k, n, m in sorted({(r.k, r.n, r.m) for r in sel}):
                cell = {r.name: r.seconds for r in sel if (r.k, r.n, r.m) == (k, n, m)}
                pt = {p: cell[p] for p in peers if p in cell}
                best = min(pt, key=pt.get) if pt else None
                line = [str(k), str(n), str(m)] + [f"{cell[p] * 1e6:,.0f}" if p in cell else "–"
                                                   for p in peers]  # fmt: skip
                line.append(best or "–")
                for p in presets:
                    if p in cell and best:
                        line.append(f"{cell[p] * 1e6:,.0f} ({pt[best] / cell[p]:.2f}x)")
                    else:
                        line.append(f"{cell[p] * 1e6:,.0f}" if p in cell else "–")
                out.append("| " + " | ".join(line) + " |")
            out.append("")
            out += _bandwidth(sel, [*peers, *presets], f"{t} thread{'s' if t > 1 else ''}, {s}")
    out += scaling(rows, [*peers, *presets])
    out += e2e_table(data.get("e2e", []))
    out += targets.table(data)
    return "\n".join(out)


def e2e_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The demo char transformer end to end: tokens/s per thread count, series, candidate."""
    if not rows:
        return []
    names = list(dict.fromkeys(r["name"] for r in rows))
    out = ["## End to end: the demo char transformer (batch 32 x 64, LM head float), "
           "tokens/s (x torch fp32)", ""]
    head = ["threads", "series", *names]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for t, s in sorted({(r["threads"], r.get("series", "interleaved")) for r in rows}):
        by = {r["name"]: r for r in rows
              if r["threads"] == t and r.get("series", "interleaved") == s}  # fmt: skip
        out.append("| " + " | ".join([str(t), s] + [
            f"{by[n]['tokens_per_s']:,.0f} ({by[n]['vs_fp32']:.2f}x)" if n in by else "–"
            for n in names]) + " |")  # fmt: skip
    return [*out, ""]


def scaling(rows: Sequence[PeerRow], names: Sequence[str]) -> list[str]:
    """Thread scaling: per series and shape, each candidate's time at the fewest threads
    over its time at the most (``1.85`` = 1.85x faster on all cores); empty with one thread
    count. Issue target: ≥ 1.7x from 1 to 2 cores at M ≥ 64."""
    ts = sorted({r.threads for r in rows})
    if len(ts) < 2:
        return []
    lo, hi = ts[0], ts[-1]
    out: list[str] = []
    for s in SERIES:
        sel = [r for r in rows if r.series == s]
        if not sel:
            continue
        out += [f"## Thread scaling {lo} → {hi}, {s}: time at {lo} / time at {hi}", ""]
        head = ["K", "N", "M", *names]
        out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for k, n, m in sorted({(r.k, r.n, r.m) for r in sel}):
            by = {(r.name, r.threads): r.seconds for r in sel if (r.k, r.n, r.m) == (k, n, m)}
            line = [str(k), str(n), str(m)]
            for p in names:
                a, b = by.get((p, lo)), by.get((p, hi))
                line.append(f"{a / b:.2f}x" if a and b else "–")
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return out


def _bandwidth(sel: Sequence[PeerRow], names: Sequence[str], title: str) -> list[str]:
    """Weight bytes per call and the effective rate (weight bytes / median time), GB/s."""
    if not any(r.weight_bytes for r in sel):
        return []
    out = [f"Effective weight bandwidth, {title}: weight MiB read per call / GB/s "
           "(weight bytes / median time; activations and outputs left out)", ""]
    head = ["K", "N", "M", *names]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k, n, m in sorted({(r.k, r.n, r.m) for r in sel}):
        by = {r.name: r for r in sel if (r.k, r.n, r.m) == (k, n, m)}
        line = [str(k), str(n), str(m)]
        for p in names:
            r = by.get(p)
            line.append(f"{r.weight_bytes / 2**20:.2f} / {r.weight_bytes / r.seconds / 1e9:.1f}"
                        if r is not None and r.weight_bytes and r.seconds > 0 else "–")
        out.append("| " + " | ".join(line) + " |")
    return [*out, ""]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("onnxruntime", "onnx", "torchao"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(a), int(b)) for a, b in (v.lower().split("x") for v in text.split(",") if v))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected KxN pairs like 768x2304, got {text!r}") from e


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rqcompile bench --peers",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--peers", action="store_true", help="(selects this suite)")
    p.add_argument("--quick", action="store_true", help="K=N=1024, M in {1, 64}")
    p.add_argument("--decode", action="store_true",
                   help="batch-1/8 decode: K x N in 2048², 4096², 768x2304, 768x3072, "
                   "3072x768, M in {1, 8}, presets " + ",".join(DECODE_PRESETS) + ", peers "
                   + ",".join(DECODE_PEERS) + " (each overridable)")
    p.add_argument("--shapes", type=_shapes, help="K x N pairs, e.g. 768x2304,3072x768")
    p.add_argument("--k", type=_ints, help="K = N sizes (default 1024,2048,4096)")
    p.add_argument("--m", type=_ints, help="batch sizes M (default 1,64,256)")
    p.add_argument("--threads", type=_ints, default=None,
                   help="thread counts, comma-separated (default: 1 and all cores)")
    p.add_argument("--presets", default=None, help="comma-separated presets")
    p.add_argument("--only-peers", default=None, help="comma-separated peers")
    p.add_argument("--series", default=",".join(SERIES), help="interleaved,standalone")
    p.add_argument("--no-e2e", action="store_true",
                   help="leave out the demo char transformer end to end (on by default except "
                   "with --decode, --k, --shapes)")
    p.add_argument("--budget", type=float, default=None, help="seconds per candidate per cell")
    p.add_argument("--out", type=Path, default=Path("rq-bench"),
                   help="results directory (default ./rq-bench)")
    p.add_argument("--name", default=None, help="file stem (default peers_<date>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    threads = args.threads or tuple(sorted({1, os.cpu_count() or 1}))
    if min(threads) < 1:
        print("--threads must be >= 1", file=sys.stderr)
        return 2
    from rqcompile.bench.timing import environment
    from rqcompile.errors import VerifyError

    env = {**environment(max(threads)), "threads": list(threads), "peers": _versions()}
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"rqcompile bench --peers: {env['cpu']}, mcpu {env['mcpu']}, threads {threads}")
    t0 = time.perf_counter()
    data: dict[str, Any] = {"env": env}
    try:
        shapes: Sequence[Any] = (args.shapes or args.k
                                 or (DECODE_SHAPES if args.decode else _QUICK_K if args.quick
                                     else _FULL_K))  # fmt: skip
        presets = args.presets or ",".join(DECODE_PRESETS if args.decode else PRESETS)
        only = args.only_peers or ",".join(DECODE_PEERS if args.decode else PEERS)
        data.update(run(
            shapes,
            args.m or (DECODE_M if args.decode else _QUICK_M if args.quick else _FULL_M),
            threads, [p for p in presets.split(",") if p],
            peers=[p for p in only.split(",") if p],
            series=[s for s in args.series.split(",") if s],
            budget_s=args.budget if args.budget is not None else (0.1 if args.quick else 0.3),
            e2e=not (args.no_e2e or args.decode or args.k or args.shapes),
            log=log))  # fmt: skip
    except VerifyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    data["wall_s"] = time.perf_counter() - t0
    stem = args.name or f"peers_{env['date'][:10]}"
    cmd = "rqcompile bench " + " ".join(sys.argv[1:] if argv is None else argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(data, cmd.strip()) + "\n")
    log("\n".join(targets.table(data)))
    log(f"done in {data['wall_s']:.0f}s; wrote {out / f'{stem}.md'}")
    return 0
