"""Kernel benchmark: rqcompile's lowered layers and models against torch fp32 and dynamic int8.

``main(argv) -> int`` runs it (``rqcompile bench``, ``python benchmarks/kernels.py``); in one
process and with one thread count it times

1. one linear layer at K = N in {768, 1024, 2048, 4096} and batch M in {1, 8, 64, 512}:
   torch fp32 ``nn.Linear``, torch dynamic int8 (fbgemm), and our A8W8, A7W8 (the
   activation precision torch's int8 uses, ``reduce_range``), A4W4, A2W2, A1W1 and
   A4W4+2:4 builds (:mod:`.layers`);
2. the demo char transformer end to end, tokens/s and weight bytes (:mod:`.model`);
3. a QAT training step in fp32, STE and ridge;
4. ``lower`` of a GPT-2-124M-shaped model;

and writes ``<out>/kernels_<mode>.{md,json,png}`` (``--out``, default ``./rq-bench``: never the
repository's committed ``benchmarks/results/`` unless asked) with the date, CPU model and
feature set. ``--peers`` runs the other suite, :mod:`.peers` (one linear layer against torch
fp32 / ``torch.compile`` / dynamic int8, torchao and ONNX Runtime, at 1 thread and all cores). Every lowered candidate is checked against the ``reference`` target first.
Nothing here is asserted: it measures and reports. Importing this package
loads neither TVM nor the demo data.

Threads default to 1: on a machine shared with other jobs, two threads that wait on each
other are slower and far noisier than one (``rqcompile/demo/presets.py``). ``--threads N``
sets both torch's and TVM's thread pool (``TVM_NUM_THREADS``, read when TVM's pool starts,
so it is set before anything is built).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_OUT", "PRESETS", "REPO_RESULTS", "main"]

PRESETS = ("A8W8", "A7W8", "A4W4", "A2W2", "A1W1", "A4W4+2:4")
#: where results go unless ``--out`` says otherwise: a folder in the current directory
DEFAULT_OUT = Path("rq-bench")
#: the repository's committed results (``benchmarks/*.py`` write here explicitly)
REPO_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
_FULL_K = (768, 1024, 2048, 4096)
_FULL_M = (1, 8, 64, 512)
_QUICK_K = (1024,)
_QUICK_M = (1, 64)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rqcompile bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", action="store_true", help="run the peers suite instead "
                   "(rqcompile.bench.peers; its own options, see rqcompile bench --peers -h)")
    p.add_argument("--quick", action="store_true", help="K=N=1024, M in {1, 64}; < 2 minutes")
    p.add_argument("--k", type=_ints, help="K = N sizes, comma-separated (overrides the mode)")
    p.add_argument("--m", type=_ints, help="batch sizes M, comma-separated")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets")
    p.add_argument("--threads", type=int, default=1, help="torch and TVM threads (default 1)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="cpu: process CPU time (default with 1 thread: robust to other jobs "
                   "on shared cores); wall: elapsed time (default with more threads)")
    p.add_argument("--budget", type=float, default=None, help="seconds of repeats per shape")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: "
                   "layers, e2e, train, lower")  # fmt: skip
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default ./rq-bench)")
    p.add_argument("--name", default=None, help="file stem (default kernels_<mode>)")
    return p


def _set_threads(n: int) -> None:
    import torch

    os.environ["TVM_NUM_THREADS"] = str(n)  # read by TVM's pool when it first starts
    torch.set_num_threads(n)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 1 if a lowered candidate disagrees with the reference."""
    if "--peers" in (sys.argv[1:] if argv is None else argv):
        from rqcompile.bench import peers

        return peers.main(argv)
    args = _parser().parse_args(argv)
    if args.threads < 1:
        print("--threads must be >= 1", file=sys.stderr)
        return 2
    _set_threads(args.threads)
    import torch

    from rqcompile.bench import layers, model, report
    from rqcompile.bench.timing import environment
    from rqcompile.errors import VerifyError

    mode = "quick" if args.quick else "full"
    ks = args.k or (_QUICK_K if args.quick else _FULL_K)
    ms = args.m or (_QUICK_M if args.quick else _FULL_M)
    presets = [p for p in args.presets.split(",") if p]
    skip = {s for s in args.skip.split(",") if s}
    budget = args.budget if args.budget is not None else (0.4 if args.quick else 1.0)
    clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    env = {**environment(args.threads), "clock": clock}
    print(f"rqcompile bench ({mode}): {env['cpu']}, mcpu {env['mcpu']}, features "
          f"{','.join(env['features'])}, {args.threads} thread(s), torch {env['torch']}, "
          f"tvm {env['tvm']}", flush=True)  # fmt: skip
    data: dict[str, Any] = {"mode": mode, "env": env}
    t0 = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731  (a one-line logger)
    try:
        if "layers" not in skip:
            log("one linear layer (median per call; ratios vs fp32 and torch dynamic int8):")
            rows = []
            for k in ks:
                rows += layers.bench_layer(k, k, ms, presets, budget_s=budget, clock=clock, log=log)
            data["layers"] = [r.to_json() for r in rows]
        if "e2e" not in skip:
            batch = (8, 64) if args.quick else (32, 64)
            e2e_presets = ["A1W1"] if args.quick else [p for p in presets if p != "A2W2"]
            log(f"char transformer end to end, batch {batch}:")
            data["e2e"] = {"batch": batch, "rows": model.bench_e2e(
                e2e_presets, batch=batch, budget_s=2 * budget, clock=clock, log=log)}  # fmt: skip
            if not args.quick:
                batch = (4, 128)
                log(f"one GPT-2-width block end to end, batch {batch}:")
                data["e2e_block"] = {"batch": batch, "rows": model.bench_e2e(
                    e2e_presets, batch=batch, budget_s=2 * budget, clock=clock, log=log,
                    model=model.gpt2_block_model(), label="GPT-2-width block")}  # fmt: skip
        if "train" not in skip:
            batch = (16, 64)
            log(f"QAT training step, batch {batch}:")
            data["train"] = {"batch": batch, "rows": model.bench_train_step(
                ["A1W1"] if args.quick else ["A1W1", "A4W4"], batch=batch,
                budget_s=3 * budget, clock=clock, log=log)}  # fmt: skip
        if "lower" not in skip:
            data["lower"] = model.bench_lower_time(n_layer=1 if args.quick else 12, log=log)
    except VerifyError as e:  # keep what was measured; the report says what failed
        print(f"error: {e}", file=sys.stderr)
        data["error"] = str(e)
    data["wall_s"] = time.perf_counter() - t0
    stem = args.name or f"kernels_{mode}"
    cmd = "rqcompile bench" + (" " + " ".join(argv) if argv else "")
    if argv is None:
        cmd = "rqcompile bench " + " ".join(sys.argv[1:])
    md = report.markdown(data, cmd.strip())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / f"{stem}.json", data)
    report.write_atomic(out / f"{stem}.md", md)
    if data.get("layers"):
        plotted = report.write_plot(
            out / f"{stem}.png", [layers.LayerResult(**r) for r in data["layers"]],
            f"{env['cpu']} ({env['mcpu']}), {args.threads} thread(s), {env['date']}")  # fmt: skip
        if plotted:
            print(f"plot: {out / f'{stem}.png'}")
    print(f"done in {data['wall_s']:.0f}s; wrote {out / f'{stem}.md'}")
    del torch
    return 1 if "error" in data else 0
