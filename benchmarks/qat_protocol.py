"""Issue 22's protocol: ridge vs STE on named grids, across learning rates, clipping and seeds.

Run through ``benchmarks/qat_quality.py --mode protocol|long|wide`` (or this file directly).
Every arm trains with fp32's recipe unchanged (AdamW, warmup, cosine, weight decay, batch,
steps; ``rqcompile.demo.loop``); only the learning rate and gradient clipping are swept, for
fp32 too. Seeds are paired: seed ``s`` gives every arm the same initial weights and the same
batches, so ``arm_A(s) - arm_B(s)`` compares like with like.

Modes (sizes chosen to fit about an hour of one CPU core; see the ``PLANS`` table):

* ``protocol``: the small char transformer, arms at A1W1 (STE-minmax, ridge-minmax,
  ridge_detached-minmax, STE-bitnet, ridge-bitnet), A2W2 (STE, ridge, ridge_detached; at
  2 bits the min/max grid is the only one) and ternary A1.5W1.5 (the A1W1 arms), plus fp32;
  LR ∈ {3e-3, 1e-2, 2e-2} × clipping {on at 1.0, off} × 4 seeds. Cells run in priority order
  (the ``cells`` list: fp32 at its tuned LR, A1W1 clipping off, A1W1 clipping on at 2e-2,
  the other fp32 cells, A1W1 clipping on at the other LRs, A2W2 off, ternary off, A2W2 on,
  ridge_detached clipping on), so a sweep stopped at a deadline keeps whole cells; the
  report counts the runs of every cell.
* ``long``: a ~3.2M-parameter char transformer (width 256, 4 layers, context 128) at A1W1,
  STE-minmax vs STE-bitnet vs ridge-bitnet vs ridge-minmax, validation every 250 steps and the per-step
  sign-flip rate of the binary weight codes. 3000 steps, 2 seeds, batch 8; context 64
  rather than 128 to fit the shared 2-core machine; LR 3e-3, clipping off.
* ``wide``: bigger model, fewer bits: a wide A1W1 model (width 128; ridge-bitnet and
  STE-minmax) vs a narrow fp32 model (width 32), 1000 steps, 2 seeds, clipping off.

Writes ``benchmarks/results/qat_quality_<mode>.{jsonl,md,csv,json}`` and PNG plots. Each
finished run is appended to the ``.jsonl`` file at once, so a stopped sweep keeps its runs and
``--resume`` skips them. Nothing is asserted: it measures and reports.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

import rqcompile as rq
from rqcompile.debug.costs import model_costs
from rqcompile.demo.data import char_corpus
from rqcompile.demo.loop import TrainConfig
from rqcompile.demo.models import CharTransformer, param_count
from rqcompile.demo.train import train_lm
from rqcompile.quant.modules import RQQuantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results")

#: arm name → (estimator, grid); ``None`` grid = the format's default.
ARMS: dict[str, tuple[str, str | None]] = {
    "fp32": ("-", None),
    "ste-minmax": ("ste", "minmax"),
    "ridge-minmax": ("ridge", "minmax"),
    "ridge_detached-minmax": ("ridge_detached", "minmax"),
    "ste-bitnet": ("ste", "bitnet"),
    "ridge-bitnet": ("ridge", "bitnet"),
}
LOW_ARMS = ("ste-minmax", "ridge-minmax", "ridge_detached-minmax", "ste-bitnet", "ridge-bitnet")
TWO_BIT_ARMS = ("ste-minmax", "ridge-minmax", "ridge_detached-minmax")

PLANS: dict[str, dict[str, Any]] = {
    "protocol": {
        "model": {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 64},
        "batch": 16,
        "steps": 300,
        "eval_every": 50,
        "eval_batches": 8,
        "seeds": [0, 1, 2, 3],
        "lrs": [3e-3, 1e-2, 2e-2],
        # (preset, arms, clips); order = priority (a sweep stopped early keeps the first)
        "cells": [
            ("fp32", ("fp32",), (0.0,), {"lrs": [3e-3]}),
            ("A1W1", LOW_ARMS, (0.0,)),
            ("A1W1", ("ste-minmax", "ridge-minmax", "ste-bitnet", "ridge-bitnet"), (1.0,),
             {"lrs": [2e-2]}),  # fmt: skip
            ("fp32", ("fp32",), (0.0, 1.0)),
            ("A1W1", ("ste-minmax", "ridge-minmax", "ste-bitnet", "ridge-bitnet"), (1.0,)),
            ("A2W2", TWO_BIT_ARMS, (0.0,)),
            ("A1.5W1.5", ("ste-minmax", "ridge-minmax", "ste-bitnet", "ridge-bitnet"), (0.0,)),
            ("A2W2", TWO_BIT_ARMS, (1.0,)),
            ("A1W1", ("ridge_detached-minmax",), (1.0,)),
        ],
    },
    "long": {
        "model": {"n_layer": 4, "n_embd": 256, "n_head": 4, "block_size": 64},
        "batch": 8,
        "steps": 3000,
        "eval_every": 250,
        "eval_batches": 8,
        "seeds": [0, 1],
        "lrs": [3e-3],
        "cells": [("A1W1", ("ste-minmax", "ridge-bitnet", "ste-bitnet", "ridge-minmax"), (0.0,))],
        "flips": True,
    },
    "wide": {
        "model": {"n_layer": 2, "n_head": 4, "block_size": 64},
        "batch": 16,
        "steps": 1000,
        "eval_every": 250,
        "eval_batches": 8,
        "seeds": [0, 1],
        "lrs": [3e-3],
        # (preset, arms, clips, width)
        "cells": [
            ("fp32", ("fp32",), (0.0,), {"width": 32}),
            ("A1W1", ("ridge-bitnet", "ste-minmax"), (0.0,), {"width": 128}),
        ],
    },
}


#: What each mode leaves out of issue 22's protocol, and why (printed in its report).
CUTS = {
    "protocol": (
        "The model is the small char transformer (width 64, 0.11M parameters), not the "
        "0.42M demo model, and runs are 300 steps, so that the 264 planned runs fit the "
        "shared 2-core machine (13-40 s of CPU each). Cells ran in priority order over two "
        "sessions (``--resume``); every planned run finished."
    ),
    "long": (
        "Context 64 instead of the suggested 128 (the model keeps its ~3.2M parameters), so "
        "that 3 arms x 2 seeds x 3000 steps fit the shared 2-core machine: 0.22-0.28 s of CPU "
        "per step at batch 8, flip meter included, two runs at a time. One LR (3e-3, every "
        "arm's best in the protocol), clipping off."
    ),
    "wide": (
        "2 seeds (not 4), 1000 steps, batch 16, LR 3e-3 without clipping; no LR sweep."
    ),
}


def run_specs(mode: str) -> list[dict[str, Any]]:
    """The sweep as data, seed-major inside each priority cell."""
    p = PLANS[mode]
    specs = []
    seen = set()
    for cell in p["cells"]:
        preset, arms, clips = cell[:3]
        opts = cell[3] if len(cell) > 3 else {}
        width = opts.get("width", p["model"].get("n_embd"))
        for seed in p["seeds"]:
            for clip in clips:
                for lr in opts.get("lrs", p["lrs"]):
                    for arm in arms:
                        spec = {"preset": preset, "arm": arm, "clip": clip, "lr": lr,
                                "seed": seed, "width": width, "steps": p["steps"]}  # fmt: skip
                        if _key(spec) not in seen:  # a later cell may repeat an earlier one
                            seen.add(_key(spec))
                            specs.append(spec)
    return specs


def _key(s: dict[str, Any]) -> tuple[Any, ...]:
    # runs of another length (an earlier, shorter plan) are other runs
    return (s["preset"], s["arm"], s["clip"], s["lr"], s["seed"], s["width"], s.get("steps"))


class FlipMeter:
    """Per-step fraction of binary weight codes that changed sign (a ``step_hook``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.qs = [m for m in model.modules()
                   if isinstance(m, RQQuantize) and m.role == "weight" and m.spec.bits == 1]  # fmt: skip
        self.prev: list[torch.Tensor] | None = None
        self.rates: list[float] = []
        self.params = self._params(model)

    def _params(self, model: torch.nn.Module) -> list[tuple[RQQuantize, torch.Tensor]]:
        # each weight quantizer's input is the parameter of the layer it belongs to
        out = []
        for q in self.qs:
            layer = model.get_submodule(q.layer) if q.layer else None
            w = getattr(layer, "weight", None)
            if isinstance(w, torch.Tensor):
                out.append((q, w))
        return out

    @torch.no_grad()
    def codes(self) -> list[torch.Tensor]:
        return [q.quantize(w.detach().float())[0] for q, w in self.params]

    def __call__(self, model: torch.nn.Module) -> None:
        cur = self.codes()
        if self.prev is not None:
            changed = sum(int((a != b).sum()) for a, b in zip(cur, self.prev))
            total = sum(a.numel() for a in cur)
            self.rates.append(changed / max(total, 1))
        self.prev = cur


def run_one(spec: dict[str, Any], p: dict[str, Any], corpus: Any) -> dict[str, Any]:
    torch.manual_seed(spec["seed"])
    mcfg = {**p["model"], "n_embd": spec["width"]}
    model: torch.nn.Module = CharTransformer(corpus.vocab_size, **mcfg)
    n_params = param_count(model)
    ex = (torch.zeros(p["batch"], mcfg["block_size"], dtype=torch.long),)
    if spec["arm"] != "fp32":
        est, grid = ARMS[spec["arm"]]
        layer = dataclasses.replace(rq.LayerSpec.from_preset(spec["preset"]).with_grid(grid),
                                    estimator=est)  # fmt: skip
        cfg_q = rq.QConfig(default=layer, overrides=(rq.Override("lm_head", None),))
        model = rq.prepare(model, ex, cfg_q)
    cfg = TrainConfig(
        steps=p["steps"],
        batch_size=p["batch"],
        lr=spec["lr"],
        warmup=max(1, p["steps"] // 10),
        grad_clip=spec["clip"],
        eval_every=p["eval_every"],
        eval_batches=p["eval_batches"],
        seed=spec["seed"],
    )
    flips = FlipMeter(model) if p.get("flips") and spec["arm"] != "fp32" else None
    if flips is not None:
        flips(model)  # codes at init
    t0, c0 = time.perf_counter(), time.process_time()
    h = train_lm(model, corpus, cfg, block_size=mcfg["block_size"], step_hook=flips)
    cpu = time.process_time() - c0
    kib, saving = model_costs(model)
    norms = [g for g in h.grad_norm if math.isfinite(g)]
    return {
        **spec,
        "params": n_params,
        "final": h.final_val_loss,
        "best": h.best_val_loss,
        "diverged": h.diverged,
        "nan_seen": h.nan_seen,
        "curve": list(zip(h.val_steps, h.val_loss)),
        "train_loss": h.train_loss[:: max(1, len(h.train_loss) // 100)],
        # share of steps whose gradient norm exceeds 1.0 (clipped when clipping is on)
        "clip_share": sum(g > 1.0 for g in norms) / max(len(norms), 1),
        "cpu_s_per_step": cpu / max(len(h.train_loss), 1),
        "wall_s": time.perf_counter() - t0,
        "weight_kib": kib,
        "energy_saving": saving,
        "flip_rate": flips.rates if flips is not None else [],
    }


def _paths(mode: str, shard: tuple[int, int] = (0, 1)) -> dict[str, str]:
    base = os.path.join(OUT, f"qat_quality_{mode}")
    tag = "" if shard == (0, 1) else f".shard{shard[0]}of{shard[1]}"
    return {k: f"{base}.{k}" for k in ("md", "csv", "json")} | {
        "base": base, "jsonl": f"{base}{tag}.jsonl"}  # fmt: skip


def load_runs(mode: str) -> list[dict[str, Any]]:
    """Every finished run of ``mode`` (all shards' ``.jsonl`` files), one per settings key."""
    import glob

    runs: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in sorted(glob.glob(f"{_paths(mode)['base']}*.jsonl")):
        with open(path) as f:
            for ln in f:
                if ln.strip():
                    r = json.loads(ln)
                    r.setdefault("steps", PLANS[mode]["steps"])  # written before runs named it
                    runs[_key(r)] = r
    return list(runs.values())


def sweep(mode: str, shard: tuple[int, int], resume: bool) -> None:
    torch.set_num_threads(1)
    p = PLANS[mode]
    corpus = char_corpus()
    done = {_key(r) for r in load_runs(mode)} if resume else set()
    if not resume and shard == (0, 1):  # a fresh sweep: forget earlier runs of this mode
        import glob

        for path in glob.glob(f"{_paths(mode)['base']}*.jsonl"):
            os.remove(path)
    specs = [s for i, s in enumerate(run_specs(mode)) if i % shard[1] == shard[0]]
    todo = [s for s in specs if _key(s) not in done]
    print(f"{mode}: {len(todo)} runs to do ({len(specs) - len(todo)} already done)", flush=True)
    t_start = time.perf_counter()
    for i, s in enumerate(todo):
        r = run_one(s, p, corpus)
        with open(_paths(mode, shard)["jsonl"], "a") as f:
            f.write(json.dumps(r) + "\n")
        el = time.perf_counter() - t_start
        eta = el / (i + 1) * (len(todo) - i - 1)
        print(f"[{i + 1}/{len(todo)}] {s['preset']} {s['arm']} lr={s['lr']:g} clip={s['clip']:g} "
              f"seed={s['seed']} w={s['width']}: final {r['final']:.4f} "
              f"({r['cpu_s_per_step'] * 1e3:.0f} ms CPU/step; ETA {eta / 60:.1f} min)", flush=True)


# -- report ---------------------------------------------------------------------------------


def _f(x: float) -> str:
    return "NaN" if not math.isfinite(x) else f"{x:.4f}"


def _score(r: dict[str, Any]) -> float:
    """Final val loss; a diverged run scores +inf (it counts as the worst seed)."""
    v = r["final"]
    return v if v is not None and math.isfinite(v) else math.inf


def _stats(rs: list[dict[str, Any]]) -> dict[str, Any]:
    xs = [_score(r) for r in rs]
    fin = [x for x in xs if math.isfinite(x)]
    return {
        "n": len(xs),
        "diverged": len(xs) - len(fin),
        "mean": statistics.fmean(xs) if len(fin) == len(xs) and xs else math.inf,
        "worst": max(xs) if xs else math.nan,
        "spread": (max(xs) - min(xs)) if xs and len(fin) == len(xs) else math.inf,
        "std": statistics.stdev(fin) if len(fin) > 1 else 0.0,
        "clip_share": statistics.fmean(r["clip_share"] for r in rs) if rs else math.nan,
    }


def group(runs: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    g: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        g.setdefault((r["preset"], r["arm"], r["width"], r["clip"], r["lr"]), []).append(r)
    return g


def best_lr(g: dict[tuple[Any, ...], list[dict[str, Any]]], preset: str, arm: str, width: int,
            clip: float) -> float | None:  # fmt: skip
    cands = [(_stats(rs)["mean"], k[4]) for k, rs in g.items()
             if k[:4] == (preset, arm, width, clip)]  # fmt: skip
    return min(cands)[1] if cands else None


def paired(runs: list[dict[str, Any]], preset: str, a: str, b: str, clip: float, lr: float,
           width: int) -> tuple[float, int, int] | None:  # fmt: skip
    """Mean of ``a(seed) - b(seed)`` at one (LR, clip), and how many seeds ``a`` won."""
    by = {(r["arm"], r["seed"]): _score(r) for r in runs
          if r["preset"] == preset and r["clip"] == clip and r["lr"] == lr and r["width"] == width}  # fmt: skip
    seeds = sorted({s for (arm, s) in by if arm == a} & {s for (arm, s) in by if arm == b})
    if not seeds:
        return None
    d = [by[(a, s)] - by[(b, s)] for s in seeds]
    if not all(math.isfinite(x) for x in d):
        wins = sum(by[(a, s)] < by[(b, s)] for s in seeds)
        return math.nan, wins, len(seeds)
    return statistics.fmean(d), sum(x < 0 for x in d), len(seeds)


def report(mode: str, runs: list[dict[str, Any]], header: str) -> str:
    p = PLANS[mode]
    g = group(runs)
    out = [f"# QAT quality: issue-22 {mode}", "", header, ""]
    planned = {_key(x) for x in run_specs(mode)}
    done = {_key(r) for r in runs}
    cells = {}
    for k in planned:
        cells.setdefault((k[0], k[1], k[2]), [0, 0])[0] += 1
        cells[(k[0], k[1], k[2])][1] += k in done
    missing = [f"{pr} {arm} clip {clip:g}: {d}/{n}" for (pr, arm, clip), (n, d) in
               sorted(cells.items()) if d < n]  # fmt: skip
    out += [f"**What was cut.** {CUTS[mode]}", ""]
    if missing:
        out += ["Runs finished / planned, for the cells the deadline cut short (the machine's "
                "2 cores were shared with other jobs all along): " + "; ".join(missing) + ".",
                ""]  # fmt: skip
    out += [
        f"Model: char transformer {p['model']} (width per row), batch {p['batch']}, "
        f"{p['steps']} steps, val every {p['eval_every']} steps on {p['eval_batches']} fixed "
        f"batches. Recipe (fp32's, unchanged for every arm): AdamW (0.9, 0.99), weight decay "
        f"0.1, warmup 10%, cosine to 0.1·LR. Seeds {p['seeds']} (paired: same init and "
        f"batches across arms). LM head and embeddings float. Score: final val loss; "
        f"a diverged run scores inf.", "",
        "Columns: mean / worst seed / spread (max - min) over seeds of the final val loss; "
        "`clip%`: share of steps whose gradient norm exceeded 1.0 (clipped when clip = 1).", "",
    ]
    presets = list(dict.fromkeys(r["preset"] for r in runs))
    for preset in presets:
        out += [f"## {preset}", "", "| arm | width | clip | LR | n | mean | worst | spread | "
                "diverged | clip% | CPU ms/step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, rs in sorted(g.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1], kv[0][4])):
            if k[0] != preset:
                continue
            st = _stats(rs)
            bl = best_lr(g, *k[:4])
            mark = " **(best LR)**" if bl == k[4] else ""
            ms = statistics.fmean(r["cpu_s_per_step"] for r in rs) * 1e3
            out.append(f"| {k[1]} | {k[2]} | {k[3]:g} | {k[4]:g}{mark} | {st['n']} | "
                       f"{_f(st['mean'])} | {_f(st['worst'])} | {_f(st['spread'])} | "
                       f"{st['diverged']} | {100 * st['clip_share']:.0f} | {ms:.0f} |")  # fmt: skip
        out.append("")
    # paired comparisons at every (LR, clip)
    pairs = [("ridge-minmax", "ste-minmax"), ("ridge-bitnet", "ste-bitnet"),
             ("ridge-minmax", "ste-bitnet"), ("ridge-bitnet", "ste-minmax"),
             ("ridge-minmax", "ridge_detached-minmax"), ("ridge-minmax", "ridge-bitnet")]  # fmt: skip
    out += ["## Paired differences (a - b, same seeds; negative = a better)", "",
            "| preset | width | clip | LR | a | b | mean(a - b) | a wins |",
            "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["preset"], r["width"], r["clip"], r["lr"]) for r in runs})
    for preset, width, clip, lr in keys:
        for a, b in pairs:
            res = paired(runs, preset, a, b, clip, lr, width)
            if res is None:
                continue
            d, wins, n = res
            out.append(f"| {preset} | {width} | {clip:g} | {lr:g} | {a} | {b} | "
                       f"{'NaN' if not math.isfinite(d) else f'{d:+.4f}'} | {wins}/{n} |")  # fmt: skip
    out.append("")
    # best LR per arm
    out += ["## Each arm at its best LR (by mean)", "",
            "| preset | arm | width | clip | best LR | mean | worst | spread | mean over all LRs |",
            "|---|---|---|---|---|---|---|---|---|"]
    arms = sorted({k[:4] for k in g})
    for preset, arm, width, clip in arms:
        bl = best_lr(g, preset, arm, width, clip)
        st = _stats(g[(preset, arm, width, clip, bl)])
        every = [r for k, rs in g.items() if k[:4] == (preset, arm, width, clip) for r in rs]
        out.append(f"| {preset} | {arm} | {width} | {clip:g} | {bl:g} | {_f(st['mean'])} | "
                   f"{_f(st['worst'])} | {_f(st['spread'])} | {_f(_stats(every)['mean'])} |")  # fmt: skip
    out.append("")
    if p.get("flips"):
        out += ["## Sign-flip rate of the binary weight codes (share of codes flipped per step)",
                "", "| arm | seed | first 10% of steps | 10-75% | last 25% | mean |",
                "|---|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
            fr = r.get("flip_rate") or []
            if not fr:
                continue
            t, q = len(fr) // 10, len(fr) * 3 // 4

            def m(xs: list[float]) -> str:
                return f"{statistics.fmean(xs):.2e}" if xs else "-"

            out.append(f"| {r['arm']} | {r['seed']} | {m(fr[:t])} | {m(fr[t:q])} | "
                       f"{m(fr[q:])} | {m(fr)} |")  # fmt: skip
        out.append("")
    if mode == "wide":
        out += ["## Bigger model, fewer bits (weight KiB over every parameter; embeddings and "
                "LM head float)", "",
                "| arm | preset | width | params | weight KiB | energy saving | mean | worst | spread |",
                "|---|---|---|---|---|---|---|---|---|"]
        for k, rs in sorted(g.items(), key=lambda kv: (kv[0][2], kv[0][1])):
            st = _stats(rs)
            out.append(f"| {k[1]} | {k[0]} | {k[2]} | {rs[0]['params']} | {rs[0]['weight_kib']:.1f} | "
                       f"{rs[0]['energy_saving']:.1f}x | {_f(st['mean'])} | {_f(st['worst'])} | "
                       f"{_f(st['spread'])} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def plots(mode: str, runs: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    g = group(runs)
    presets = list(dict.fromkeys(r["preset"] for r in runs if r["preset"] != "fp32"))
    clips = sorted({r["clip"] for r in runs}, reverse=True)
    widths = sorted({r["width"] for r in runs})
    fp = [k for k in g if k[1] == "fp32"]
    fig, axes = plt.subplots(len(clips), max(len(presets), 1), squeeze=False,
                             figsize=(5 * max(len(presets), 1), 3.8 * len(clips)))  # fmt: skip
    for i, clip in enumerate(clips):
        for j, preset in enumerate(presets):
            ax = axes[i][j]
            arms = sorted({k[1] for k in g if k[0] == preset and k[3] == clip})
            for arm in arms + (["fp32"] if fp else []):
                pr = "fp32" if arm == "fp32" else preset
                for w in widths:
                    bl = best_lr(g, pr, arm, w, clip)
                    if bl is None:
                        continue
                    rs = g[(pr, arm, w, clip, bl)]
                    steps = [s for s, _ in rs[0]["curve"]]
                    ys = [[v for _, v in r["curve"]] for r in rs if len(r["curve"]) == len(steps)]
                    if not ys:
                        continue
                    cols = list(zip(*ys))
                    mean = [statistics.fmean(c) if all(math.isfinite(x) for x in c) else math.nan
                            for c in cols]  # fmt: skip
                    lab = f"{arm} lr={bl:g}" + (f" w={w}" if len(widths) > 1 else "")
                    (line,) = ax.plot(steps, mean, label=lab, ls="--" if arm == "fp32" else "-")
                    ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols],
                                    color=line.get_color(), alpha=0.15)  # fmt: skip
            ax.set_title(f"{preset}, clip {'on (1.0)' if clip else 'off'}; bands: seed min-max")
            ax.set_xlabel("step")
            ax.set_ylabel("val loss")
            ax.legend(fontsize=7)
            lo = [v for r in runs if r["preset"] in (preset, "fp32") for _, v in r["curve"][1:]
                  if math.isfinite(v)]  # fmt: skip
            if lo:
                ax.set_ylim(min(lo) - 0.05, min(max(lo) + 0.05, min(lo) + 1.2))
    fig.tight_layout()
    path = f"{_paths(mode)['base']}_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    if len(PLANS[mode]["lrs"]) > 1:  # LR sensitivity: mean and seed range per arm
        fig, axes = plt.subplots(1, len(presets), squeeze=False, figsize=(7 * len(presets), 4.5))
        for j, preset in enumerate(presets):
            ax = axes[0][j]
            for ci, arm in enumerate(sorted({k[1] for k in g if k[0] in (preset, "fp32")})):
                pr = "fp32" if arm == "fp32" else preset
                for clip in clips:
                    ks = sorted(k for k in g if k[:2] == (pr, arm) and k[3] == clip)
                    if not ks:
                        continue
                    xs = [k[4] for k in ks]
                    sts = [_stats(g[k]) for k in ks]
                    ys = [s["mean"] if math.isfinite(s["mean"]) else math.nan for s in sts]
                    (line,) = ax.plot(xs, ys, marker="o" if clip else "s", ls="-" if clip else ":",
                                      color=f"C{ci}",
                                      label=f"{arm} clip {'on' if clip else 'off'}")  # fmt: skip
                    lo = [min(_score(r) for r in g[k]) for k in ks]
                    hi = [min(s["worst"], 6.0) for s in sts]
                    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.1)
            ax.set_xscale("log")
            ax.set_title(f"{preset}: final val loss vs LR (mean; band: seed range)")
            ax.set_xlabel("peak LR")
            ax.set_ylabel("final val loss")
            ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = f"{_paths(mode)['base']}_lr.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    flips = [r for r in runs if r.get("flip_rate")]
    if flips:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        for r in flips:
            fr = r["flip_rate"]
            k = max(25, len(fr) // 60)
            sm = [statistics.fmean(fr[max(0, i - k):i + 1]) for i in range(len(fr))]
            ax.plot(range(1, len(fr) + 1), sm, label=f"{r['arm']} seed {r['seed']}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("codes flipped per step")
        ax.set_title("binary weight codes that changed, share per step (running mean)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = f"{_paths(mode)['base']}_flips.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def write(mode: str) -> None:
    runs = load_runs(mode)
    cpu = platform.processor() or platform.machine()
    header = (f"Generated by `python benchmarks/qat_quality.py --mode {mode}` on {cpu}, "
              f"torch {torch.__version__}, 1 thread per run; {len(runs)} runs of "
              f"{len(run_specs(mode))} planned.")  # fmt: skip
    text = report(mode, runs, header)
    paths = _paths(mode)
    with open(paths["md"], "w") as f:
        f.write(text + "\n")
    cols = ["preset", "arm", "width", "clip", "lr", "seed", "params", "final", "best", "diverged",
            "nan_seen", "clip_share", "cpu_s_per_step", "weight_kib", "energy_saving"]  # fmt: skip
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in runs:
            w.writerow([r[c] for c in cols])
    summary = {f"{k[0]}|{k[1]}|w{k[2]}|clip{k[3]:g}|lr{k[4]:g}": _stats(rs)
               for k, rs in group(runs).items()}  # fmt: skip
    with open(paths["json"], "w") as f:
        json.dump({"plan": PLANS[mode], "summary": summary}, f, indent=1, default=str)
    for path in plots(mode, runs):
        print("wrote", path)
    print("wrote", paths["md"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(PLANS), default="protocol")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th spec from i")
    ap.add_argument("--resume", action="store_true", help="skip runs already in the .jsonl")
    ap.add_argument("--report", action="store_true", help="only write the report from the .jsonl")
    a = ap.parse_args(argv)
    i, n = (int(x) for x in a.shard.split("/"))
    if not a.report:
        sweep(a.mode, (i, n), a.resume)
    write(a.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
