"""QAT quality sweep: fp32 vs STE vs ridge on Shakespeare (char transformer) and sklearn digits.

Writes ``benchmarks/results/qat_quality_<mode>.{md,csv,json}`` and PNG plots (val loss vs bits,
training curves, λ sweep). Nothing here is asserted: it measures and reports.

    python benchmarks/qat_quality.py --quick        # < ~10 minutes on 2 cores
    python benchmarks/qat_quality.py                # the full sweep (hours on 2 cores)
    python benchmarks/qat_quality.py --mode estimators   # ste/ridge/pege/gdnsq, 3 seeds
    python benchmarks/qat_quality.py --mode protocol     # issue 22: grids x LR x clipping
    python benchmarks/qat_quality.py --mode long         # issue 22: 3M-parameter A1W1 run
    python benchmarks/qat_quality.py --mode wide         # issue 22: bigger model, fewer bits

The three issue-22 modes live in ``benchmarks/qat_protocol.py`` (its docstring has the plan).

Settings (docs/method.md#what-the-paper-reports): presets A8W8..A1W1, 2:4 variants, STE vs ridge; 3 seeds for the
≤2-bit settings (full mode); λ ∈ {0, 1e-3, 1e-2, 1e-1, 1}; block ∈ {32, 128, per-channel};
"bigger model, fewer bits" (a wide A1W1 model vs a narrower fp32 one, with bytes and energy).
``--mode estimators`` compares the four gradient estimators (docs/estimators.md) at A1W1, A2W2
and A4W4 on both tasks, 3 seeds, with their training cost in seconds per step; ``pege`` ramps
and ``gdnsq`` anneals over the first half of training, and ``gdnsq`` is scored at the integer
widths it deploys (its learned widths rounded as ``rq.convert`` does).
The LM head and embeddings stay float (paper's recommendation); for the CNN the first conv and
the classifier stay float.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import warnings

import torch

import rqcompile as rq
from rqcompile.debug.costs import model_costs
from rqcompile.demo.data import char_corpus, digits
from rqcompile.demo.loop import TrainConfig
from rqcompile.demo.models import CharTransformer, DigitsCNN
from rqcompile.demo.train import accuracy, evaluate_lm, train_classifier, train_lm

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results")


@dataclass
class Run:
    task: str
    label: str
    preset: str
    estimator: str
    seed: int
    ridge_lambda: float = 0.01
    block: str = "128"
    width: int = 0
    val_loss: float = float("nan")
    val_acc: float = float("nan")
    diverged: bool = False
    nan_seen: bool = False
    seconds: float = 0.0
    weight_kib: float = 0.0
    energy_saving: float = 1.0
    curve: list[tuple[int, float]] = field(default_factory=list)
    sec_per_step: float = 0.0  # training loop wall time / steps (its few evaluations included)
    bits: str = ""  # gdnsq: learned -> deployed mean widths, e.g. "W 1.93->2.00 A 2.10->2.00"


def _finish(model: torch.nn.Module, h: Any, t0: float, **fields: Any) -> Run:
    """A Run record from a finished training history (costs measured on the trained model)."""
    kib, saving = model_costs(model)
    fields.setdefault("val_loss", h.final_val_loss)
    return Run(diverged=h.diverged, nan_seen=h.nan_seen,
               seconds=time.perf_counter() - t0, weight_kib=kib, energy_saving=saving,
               curve=list(zip(h.val_steps, h.val_loss)),
               sec_per_step=h.elapsed_s / max(len(h.train_loss), 1), **fields)


#: Schedules of the stateful estimators: ramp / anneal over the first half of training.
_SCHEDULE = {"pege": "ramp_steps", "gdnsq": "anneal_steps"}


def _estimator_kw(estimator: str, steps: int) -> dict[str, Any]:
    """prepare() keywords for ``estimator``: its schedule length (none for ste/ridge)."""
    if estimator not in _SCHEDULE:
        return {}
    return {"estimator_options": {_SCHEDULE[estimator]: max(1, steps // 2)}}


def _hooks(estimator: str) -> dict[str, Any]:
    return {"aux_loss": rq.aux_loss, "step_hook": rq.step} if estimator in _SCHEDULE else {}


def _deployed(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """``model`` with its estimator state made final as ``rq.convert`` does, and a bits note.

    Only gdnsq changes the model here (learned widths rounded); the note gives the mean learned
    and deployed widths of weights and activations."""
    from rqcompile.quant.hooks import finalize_for_convert
    from rqcompile.quant.modules import RQQuantize

    def widths(m: torch.nn.Module) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"weight": [], "activation": []}
        for q in m.modules():
            st = getattr(q, "estimator_state", None)
            if isinstance(q, RQQuantize) and hasattr(st, "bits"):
                out[q.role].append(float(st.bits().detach()))  # type: ignore[union-attr]
        return out

    before = widths(model)
    if not before["weight"]:
        return model, ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note below reports what the warnings would say
        final = finalize_for_convert(model)
    after = widths(final)
    note = " ".join(
        f"{role[0].upper()} {_mean(before[role]):.2f}->{_mean(after[role]):.2f}"
        for role in ("weight", "activation")
        if before[role]
    )
    return final, note


def lm_run(
    corpus: Any,
    *,
    preset: str,
    estimator: str,
    seed: int,
    width: int,
    steps: int,
    batch: int,
    block_size: int,
    lam: float = 0.01,
    block_size_q: int | str | None = 128,
    label: str = "",
) -> Run:
    torch.manual_seed(seed)
    model = CharTransformer(
        corpus.vocab_size, n_layer=2, n_head=4, n_embd=width, block_size=block_size
    )
    ex = (torch.zeros(batch, block_size, dtype=torch.long),)
    if preset != "fp32":
        kw: dict[str, Any] = {
            "estimator": estimator,
            "ridge_lambda": lam,
            "overrides": {"lm_head": None},
            **_estimator_kw(estimator, steps),
        }
        if block_size_q != 128:
            kw["block_size"] = None if block_size_q == "per-channel" else block_size_q
        model = rq.prepare(model, ex, preset, **kw)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=3e-3,
        warmup=max(1, steps // 10),
        eval_every=max(1, steps // 5),
        eval_batches=8,
        seed=seed,
    )
    t0 = time.perf_counter()
    h = train_lm(model, corpus, cfg, block_size=block_size, **_hooks(estimator))
    extra: dict[str, Any] = {}
    final, note = _deployed(model)
    if note:  # gdnsq: score the deployed widths
        extra = {"bits": note, "val_loss": evaluate_lm(
            final, corpus.val, batch_size=batch, block_size=block_size, n_batches=cfg.eval_batches)}
    return _finish(model, h, t0, **extra, task="lm", label=label or f"{preset} {estimator}",
                   preset=preset,
                   estimator=estimator, seed=seed, ridge_lambda=lam, block=str(block_size_q),
                   width=width)


def cnn_run(data: Any, *, preset: str, estimator: str, seed: int, steps: int) -> Run:
    torch.manual_seed(seed)
    model: torch.nn.Module = DigitsCNN()
    if preset != "fp32":
        model = rq.prepare(
            model,
            (data[0][:8],),
            preset,
            estimator=estimator,
            overrides={"conv1": None, "fc": None},
            **_estimator_kw(estimator, steps),
        )
    cfg = TrainConfig(
        steps=steps, batch_size=64, lr=3e-3, warmup=10, eval_every=max(1, steps // 5), seed=seed
    )
    t0 = time.perf_counter()
    h = train_classifier(model, data, cfg, **_hooks(estimator))
    final, note = _deployed(model)
    extra: dict[str, Any] = {}
    if note:  # gdnsq: score the deployed widths
        extra = {"bits": note, "val_loss": test_loss(final, data[2], data[3])}
    return _finish(model, h, t0, **extra, task="digits", label=f"{preset} {estimator}",
                   preset=preset, estimator=estimator, seed=seed, width=32,
                   val_acc=accuracy(final, data[2], data[3]))


@torch.no_grad()
def test_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy on the digits test set (what ``train_classifier`` reports), eval mode."""
    was = model.training
    model.eval()
    try:
        return float(torch.nn.functional.cross_entropy(model(x), y))
    finally:
        model.train(was)


ESTIMATORS = ("ste", "ridge", "pege", "gdnsq")


def plan(mode: str) -> dict[str, Any]:
    if mode == "estimators":  # quick-mode LM size, 3 seeds, every estimator
        return {
            "width": 64,
            "steps": 300,
            "batch": 16,
            "block": 64,
            "seeds_low": [0, 1, 2],
            "presets": ["A1W1", "A2W2", "A4W4"],
            "estimators": list(ESTIMATORS),
            "lams": [],
            "blocks": [],
            "wide": None,
            "cnn_steps": 300,
            "cnn_seeds": [0, 1, 2],
        }
    if mode == "quick":
        return {
            "width": 64,
            "steps": 300,
            "batch": 16,
            "block": 64,
            "seeds_low": [0],
            "presets": ["A8W8", "A4W4", "A2W2", "A1W1", "A4W1+2:4"],
            "lams": [0.0, 0.01, 1.0],
            "blocks": [],
            "wide": (128, 32),
            "cnn_steps": 400,
            "cnn_seeds": [0],
        }
    if mode == "medium":  # the ≤2-bit claims with 3 seeds at a size that fits ~1 hour of 2 cores
        return {
            "width": 128,
            "steps": 1000,
            "batch": 32,
            "block": 64,
            "seeds_low": [0, 1, 2],
            "presets": ["A2W2", "A1W1"],
            "lams": [],
            "blocks": [],
            "wide": None,
            "cnn_steps": 600,
            "cnn_seeds": [0, 1, 2],
        }
    return {
        "width": 128,
        "steps": 1000,
        "batch": 32,
        "block": 64,
        "seeds_low": [0, 1, 2],
        "presets": ["A8W8", "A4W4", "A2W2", "A1.5W1.5", "A1W1", "A4W4+2:4", "A4W1+2:4"],
        "lams": [0.0, 1e-3, 1e-2, 1e-1, 1.0],
        "blocks": [32, 128, "per-channel"],
        "wide": (256, 64),
        "cnn_steps": 600,
        "cnn_seeds": [0, 1, 2],
    }


def _low(preset: str) -> bool:
    return preset in ("A2W2", "A1W1", "A1.5W1.5")


def _estimator_specs(p: dict[str, Any]) -> list[dict[str, Any]]:
    """``--mode estimators``: fp32 + every (preset, estimator) on both tasks, all seeds."""
    common = {"width": p["width"], "steps": p["steps"], "batch": p["batch"],
              "block_size": p["block"]}  # fmt: skip
    specs: list[dict[str, Any]] = []
    # seed-major order: a sweep stopped early still holds complete seeds (shards save per run)
    for seed in sorted(set(p["seeds_low"]) | set(p["cnn_seeds"])):
        if seed in p["seeds_low"]:
            specs.append({"task": "lm", "preset": "fp32", "estimator": "-", "seed": seed,
                          **common, "label": "fp32"})  # fmt: skip
            for preset in p["presets"]:
                for est in p["estimators"]:
                    specs.append({"task": "lm", "preset": preset, "estimator": est,
                                  "seed": seed, **common})  # fmt: skip
        if seed in p["cnn_seeds"]:
            specs.append({"task": "digits", "preset": "fp32", "estimator": "-", "seed": seed,
                          "steps": p["cnn_steps"]})  # fmt: skip
            for preset in p["presets"]:
                for est in p["estimators"]:
                    specs.append({"task": "digits", "preset": preset, "estimator": est,
                                  "seed": seed, "steps": p["cnn_steps"]})  # fmt: skip
    return specs


def run_specs(mode: str) -> list[dict[str, Any]]:
    """The sweep as data: one dict of keyword arguments per run (so it can be sharded)."""
    p = plan(mode)
    if mode == "estimators":
        return _estimator_specs(p)
    common = {
        "width": p["width"],
        "steps": p["steps"],
        "batch": p["batch"],
        "block_size": p["block"],
    }
    specs: list[dict[str, Any]] = []
    for seed in p["seeds_low"]:
        specs.append(
            {
                "task": "lm",
                "preset": "fp32",
                "estimator": "-",
                "seed": seed,
                **common,
                "label": "fp32",
            }
        )
    for preset in p["presets"]:
        for est in ("ste", "ridge"):
            for seed in p["seeds_low"] if _low(preset) else [0]:
                specs.append(
                    {"task": "lm", "preset": preset, "estimator": est, "seed": seed, **common}
                )
    for lam in p["lams"]:
        if lam != 0.01:
            specs.append(
                {
                    "task": "lm",
                    "preset": "A1W1",
                    "estimator": "ridge",
                    "seed": 0,
                    "lam": lam,
                    **common,
                    "label": f"A1W1 ridge λ={lam:g}",
                }
            )
    for b in p["blocks"]:
        if b != 128:
            for est in ("ste", "ridge"):
                specs.append(
                    {
                        "task": "lm",
                        "preset": "A1W1",
                        "estimator": est,
                        "seed": 0,
                        "block_size_q": b,
                        **common,
                        "label": f"A1W1 {est} block={b}",
                    }
                )
    if p["wide"]:
        wide, narrow = p["wide"]
        specs.append(
            {
                "task": "lm",
                "preset": "A1W1",
                "estimator": "ridge",
                "seed": 0,
                **{**common, "width": wide},
                "label": f"wide A1W1 ridge (w={wide})",
            }
        )
        specs.append(
            {
                "task": "lm",
                "preset": "fp32",
                "estimator": "-",
                "seed": 0,
                **{**common, "width": narrow},
                "label": f"narrow fp32 (w={narrow})",
            }
        )
    for seed in p["cnn_seeds"]:
        for preset, est in (("fp32", "-"), ("A1W1", "ste"), ("A1W1", "ridge")):
            specs.append(
                {
                    "task": "digits",
                    "preset": preset,
                    "estimator": est,
                    "seed": seed,
                    "steps": p["cnn_steps"],
                }
            )
    return specs


def _spec_key(spec: dict[str, Any]) -> tuple[Any, ...]:
    label = spec.get("label") or f"{spec['preset']} {spec['estimator']}"
    return spec["task"], label, spec["seed"], spec.get("width", 32)


_SAME = ("width", "steps", "batch", "block", "cnn_steps")


def split_reused(
    specs: list[dict[str, Any]], p: dict[str, Any], paths: list[str]
) -> tuple[list[Run], list[dict[str, Any]]]:
    """Runs already measured with identical settings (from ``paths``) and the specs still to run.

    A file is used only if its plan agrees with ``p`` on every setting that shapes a run."""
    have: dict[tuple[Any, ...], Run] = {}
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        other = json.loads(d["header"].split("Plan: ", 1)[1].split("}", 1)[0] + "}")
        if any(other.get(k) != p.get(k) for k in _SAME):
            raise SystemExit(f"--reuse {path}: its plan differs from this one in {_SAME}")
        for r in d["runs"]:
            run = Run(**{**r, "curve": [tuple(c) for c in r["curve"]]})
            have[(run.task, run.label, run.seed, run.width)] = run
    reused = [have[_spec_key(s)] for s in specs if _spec_key(s) in have]
    todo = [s for s in specs if _spec_key(s) not in have]
    return reused, todo


def sweep(specs: list[dict[str, Any]], log: Any, on_run: Any = None) -> list[Run]:
    corpus = char_corpus() if any(s["task"] == "lm" for s in specs) else None
    data = digits() if any(s["task"] == "digits" for s in specs) else None
    runs: list[Run] = []
    for spec in specs:
        kw = {k: v for k, v in spec.items() if k != "task"}
        r = lm_run(corpus, **kw) if spec["task"] == "lm" else cnn_run(data, **kw)
        runs.append(r)
        if on_run is not None:
            on_run(runs)
        state = "DIVERGED" if r.diverged else f"val {r.val_loss:.4f}"
        extra = f" acc {r.val_acc:.3f}" if r.task == "digits" else ""
        log(
            f"  [{len(runs):3d}/{len(specs)}] {r.task:6s} {r.label:28s} seed {r.seed}: "
            f"{state}{extra} ({r.seconds:.0f}s)"
        )
    return runs


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def report(runs: list[Run], mode: str, header: str) -> str:
    lm = [r for r in runs if r.task == "lm"]
    fp = _mean([r.val_loss for r in lm if r.label == "fp32"])
    lines = [
        f"# QAT quality ({mode})",
        "",
        header,
        "",
        "## Char transformer on Shakespeare (val = held-out plays; mean over seeds)",
        "",
        "| setting | seeds | val loss | vs fp32 | diverged | weights KiB | energy saving |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[str, list[Run]] = {}
    for r in lm:
        groups.setdefault(r.label, []).append(r)
    for label, rs in groups.items():
        v = _mean([r.val_loss for r in rs if not r.diverged])
        lines.append(
            f"| {label} | {len(rs)} | {v:.4f} | {100 * (v / fp - 1):+.1f}% | "
            f"{sum(r.diverged for r in rs)} | {rs[0].weight_kib:.1f} | {rs[0].energy_saving:.0f}x |"
        )
    lines += [
        "",
        "## Ridge vs STE per preset (gap closed = (STE − ridge) / (STE − fp32))",
        "",
        "| preset | STE | ridge | ridge wins (seeds) | gap closed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for preset in dict.fromkeys(r.preset for r in lm if r.estimator in ("ste", "ridge")):
        ste = {r.seed: r.val_loss for r in groups.get(f"{preset} ste", [])}
        rid = {r.seed: r.val_loss for r in groups.get(f"{preset} ridge", [])}
        if not ste or not rid:
            continue
        wins = sum(rid[s] < ste[s] for s in rid if s in ste)
        s_m, r_m = _mean(list(ste.values())), _mean(list(rid.values()))
        closed = (s_m - r_m) / (s_m - fp) if s_m > fp else float("nan")
        lines.append(
            f"| {preset} | {s_m:.4f} | {r_m:.4f} | {wins}/{len(rid)} | {100 * closed:.0f}% |"
        )
    dg = [r for r in runs if r.task == "digits"]
    lines += [
        "",
        "## Digits CNN (sklearn; conv1 and fc float)",
        "",
        "| setting | seeds | test acc | test loss |",
        "| --- | --- | --- | --- |",
    ]
    for label in dict.fromkeys(r.label for r in dg):
        rs = [r for r in dg if r.label == label]
        lines.append(
            f"| {label} | {len(rs)} | {_mean([r.val_acc for r in rs]):.3f} | "
            f"{_mean([r.val_loss for r in rs]):.4f} |"
        )
    if mode == "full":
        lines += targets_section(runs)
    return "\n".join(lines) + "\n"


def _n_params(width: int) -> int:
    """Parameters of the sweep's char transformer at ``width`` (for bits per element)."""
    m = CharTransformer(char_corpus().vocab_size, n_layer=2, n_head=4, n_embd=width, block_size=64)
    return sum(p.numel() for p in m.parameters())


def targets_section(runs: list[Run]) -> list[str]:
    """The issue's targets, each checked against the measured means (nothing is tuned to them)."""
    lm = [r for r in runs if r.task == "lm"]

    def mean_of(label: str) -> float:
        return _mean([r.val_loss for r in lm if r.label == label and not r.diverged])

    fp = mean_of("fp32")
    out = ["", "## Targets (docs/method.md#what-the-paper-reports / issue 5) against what was measured", "",
           "| target | measured | met |", "| --- | --- | --- |"]

    def row(name: str, measured: str, ok: bool) -> None:
        out.append(f"| {name} | {measured} | {'yes' if ok else 'no'} |")

    for preset in ("A1W1", "A2W2"):
        ste = {r.seed: r.val_loss for r in lm if r.label == f"{preset} ste"}
        rid = {r.seed: r.val_loss for r in lm if r.label == f"{preset} ridge"}
        if ste and rid:
            wins = sum(rid[k] < ste[k] for k in rid if k in ste)
            s_m, r_m = _mean(list(ste.values())), _mean(list(rid.values()))
            closed = (s_m - r_m) / (s_m - fp)
            row(f"{preset}: ridge beats STE in 3/3 seeds", f"{wins}/{len(rid)}", wins == len(rid))
            row(f"{preset}: ridge closes ≥30% of STE's gap", f"{100 * closed:.0f}%", closed >= 0.3)
    for label, tol in (("A4W4 ridge", 2.0), ("A8W8 ridge", 0.5), ("A4W4+2:4 ridge", 5.0)):
        v = mean_of(label)
        if v == v:
            gap = 100 * (v / fp - 1)
            row(f"{label} within {tol:g}% of fp32", f"{gap:+.2f}%", gap <= tol)
    ridge = [r for r in lm if r.estimator == "ridge"]
    if ridge:
        bad = sum(r.diverged or r.nan_seen for r in ridge)
        row("no NaN or divergence in any ridge run", f"{bad}/{len(ridge)} bad", bad == 0)
    lam0, lam = mean_of("A1W1 ridge λ=0"), mean_of("A1W1 ridge")
    if lam0 == lam0 or any(r.label == "A1W1 ridge λ=0" for r in lm):
        d0 = any(r.diverged for r in lm if r.label == "A1W1 ridge λ=0")
        row("λ=0 unstable or worse than λ=0.01",
            "diverged" if d0 else f"{lam0:.4f} vs {lam:.4f}", d0 or lam0 > lam)
    dg = [r for r in runs if r.task == "digits"]
    acc = {lab: _mean([r.val_acc for r in dg if r.label == lab])
           for lab in ("fp32 -", "A1W1 ridge")}
    if dg:
        d = 100 * (acc["fp32 -"] - acc["A1W1 ridge"])
        row("digits A1W1 ridge within 3 points of fp32", f"{d:.1f} points below", d <= 3.0)
    wide = [r for r in lm if r.label.startswith("wide")]
    narrow = [r for r in lm if r.label.startswith("narrow")]
    if wide and narrow:
        w, n = wide[0], narrow[0]
        out += ["", "## Bigger model, fewer bits (weights counted over every parameter)", "",
                "| model | params | weight KiB | bits/element | energy saving vs fp32 | val loss |",
                "| --- | --- | --- | --- | --- | --- |"]
        for r in (w, n):
            p = _n_params(r.width)
            out.append(f"| {r.label} | {p} | {r.weight_kib:.1f} | "
                       f"{r.weight_kib * 8192 / p:.2f} | {r.energy_saving:.1f}x | "
                       f"{r.val_loss:.4f} |")
    return out


def plots(runs: list[Run], mode: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    lm = [
        r
        for r in runs
        if r.task == "lm" and r.width == max(x.width for x in runs if x.label == "fp32")
    ]
    fp = _mean([r.val_loss for r in lm if r.label == "fp32"])
    bits = {"A8W8": 8, "A4W4": 4, "A2W2": 2, "A1.5W1.5": 1.5, "A1W1": 1}
    fig, ax = plt.subplots(figsize=(6, 4))
    for est, mk in (("ste", "s--"), ("ridge", "o-")):
        xs, ys = [], []
        for pr, b in bits.items():
            vs = [
                r.val_loss
                for r in lm
                if r.preset == pr
                and r.estimator == est
                and r.ridge_lambda == 0.01
                and r.block == "128"
                and not r.diverged
            ]
            if vs:
                xs.append(b)
                ys.append(_mean(vs))
        ax.plot(xs, ys, mk, label=est.upper() if est == "ste" else "ridge (λ=0.01)")
    ax.axhline(fp, color="k", lw=1, label="fp32")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits (activations = weights)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("Char transformer on Shakespeare: val loss vs bits")
    ax.legend()
    fig.tight_layout()
    files.append(os.path.join(OUT, f"qat_quality_{mode}_bits.png"))
    fig.savefig(files[-1], dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in lm:
        if (
            r.seed == 0
            and r.preset in ("fp32", "A1W1", "A2W2")
            and r.ridge_lambda == 0.01
            and r.block == "128"
            and "wide" not in r.label
            and "narrow" not in r.label
        ):
            pts = [
                (s, v) for s, v in r.curve if s > 0
            ]  # skip the untrained point: it flattens the plot
            xs, ys = zip(*pts) if pts else ((), ())
            ax.plot(xs, ys, "-o", ms=3, label=r.label)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("Training curves (seed 0; step 0 omitted)")
    ax.legend()
    fig.tight_layout()
    files.append(os.path.join(OUT, f"qat_quality_{mode}_curves.png"))
    fig.savefig(files[-1], dpi=120)
    lam = sorted(
        (r.ridge_lambda, r.val_loss, r.diverged)
        for r in lm
        if r.preset == "A1W1"
        and r.estimator == "ridge"
        and r.seed == 0
        and r.block == "128"
        and "wide" not in r.label
    )
    if len({v for v, _, _ in lam}) > 1:  # a sweep needs at least two values of λ
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [max(v, 1e-4) for v, _, _ in lam]
        ax.plot(xs, [v for _, v, _ in lam], "o-")
        for x, (_, v, d) in zip(xs, lam):
            if d:
                ax.annotate("NaN", (x, v))
        ax.set_xscale("log")
        ax.set_xlabel("ridge λ (λ=0 plotted at 1e-4)")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_title("A1W1 ridge: λ sweep")
        fig.tight_layout()
        files.append(os.path.join(OUT, f"qat_quality_{mode}_lambda.png"))
        fig.savefig(files[-1], dpi=120)
    plt.close("all")
    return files


def _write(runs: list[Run], mode: str, header: str) -> None:
    if mode == "estimators":
        import qat_estimators_report as est_report  # beside this script

        text = est_report.report(runs, header, list(ESTIMATORS))
    else:
        text = report(runs, mode, header)
    with open(os.path.join(OUT, f"qat_quality_{mode}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(OUT, f"qat_quality_{mode}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        keys = [k for k in asdict(runs[0]) if k != "curve"]
        w.writerow(keys)
        for r in runs:
            w.writerow([getattr(r, k) for k in keys])
    with open(os.path.join(OUT, f"qat_quality_{mode}.json"), "w") as f:
        json.dump({"header": header, "runs": [asdict(r) for r in runs]}, f, indent=1)
    if mode == "estimators":
        files = est_report.write_extras(runs, OUT, mode, list(ESTIMATORS))
    else:
        files = plots(runs, mode)
    print("\n" + text)
    print("plots: " + ", ".join(os.path.relpath(x) for x in files))


#: Issue-22 modes, implemented in ``benchmarks/qat_protocol.py`` (grids, LR × clipping, paired
#: seeds, the long 3M-parameter run and bigger-model-fewer-bits on the longer schedule).
PROTOCOL_MODES = ("protocol", "long", "wide")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for k, arg in enumerate(argv):  # --mode protocol|long|wide: hand over to qat_protocol
        mode_arg = arg.split("=", 1)[1] if arg.startswith("--mode=") else (
            argv[k + 1] if arg == "--mode" and k + 1 < len(argv) else None)  # fmt: skip
        if mode_arg in PROTOCOL_MODES:
            sys.path.insert(0, HERE)
            import qat_protocol

            return int(qat_protocol.main(argv))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small model, one seed (< ~10 min)")
    ap.add_argument(
        "--mode",
        choices=["quick", "medium", "full", "estimators"],
        default=None,
        help="quick (< ~10 min), medium (≤2-bit, 3 seeds, ~1 h), full (hours), estimators "
        "(ste/ridge/pege/gdnsq at A1W1/A2W2/A4W4, 3 seeds)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a busy 2-core machine 2 threads run ~4x slower)",
    )
    ap.add_argument(
        "--shard", default="0/1", help="run shard i of n (e.g. 0/2 and 1/2 in two processes)"
    )
    ap.add_argument("--merge", action="store_true", help="merge the shard JSON files and report")
    ap.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="JSON",
        help="result JSON files (e.g. the medium sweep) whose runs with the same settings are "
        "reused instead of re-trained (runs are deterministic for a fixed seed)",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    mode = a.mode or ("quick" if a.quick else "full")
    os.makedirs(OUT, exist_ok=True)
    i, n = (int(v) for v in a.shard.split("/"))
    if a.merge:
        runs, headers = [], []
        for k in range(n):
            with open(os.path.join(OUT, f"qat_quality_{mode}.shard{k}of{n}.json")) as f:
                d = json.load(f)
            headers.append(f"[shard {k}/{n}] {d['header']}")
            runs += [Run(**{**r, "curve": [tuple(c) for c in r["curve"]]}) for r in d["runs"]]
        _write(runs, mode, "\n\n".join(headers))
        return 0
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    header = (
        f"Measured {datetime.date.today().isoformat()} on {cpu}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) per process. "
        f"Plan: {json.dumps(plan(mode))}"
    )
    print(header, flush=True)
    t0 = time.perf_counter()
    reused, specs = split_reused(run_specs(mode), plan(mode), a.reuse)
    specs = specs[i::n]
    if reused:
        print(f"reusing {len(reused)} runs from {', '.join(a.reuse)}", flush=True)
        header += f" {len(reused)} runs reused from {', '.join(map(os.path.basename, a.reuse))}."
    shard_path = os.path.join(OUT, f"qat_quality_{mode}.shard{i}of{n}.json")

    def save_shard(done: list[Run], note: str) -> None:  # after every run: a stop keeps results
        with open(shard_path + ".tmp", "w") as f:
            json.dump({"header": header + note, "runs": [asdict(r) for r in done]}, f, indent=1)
        os.replace(shard_path + ".tmp", shard_path)

    def partial(done: list[Run]) -> None:
        if n > 1:
            save_shard(done + (reused if i == 0 else []),
                       f" Partial: {len(done)} of {len(specs)} runs (shard {i}/{n}).")  # fmt: skip

    runs = sweep(specs, lambda s: print(s, flush=True), partial) + (reused if i == 0 else [])
    header += f" Wall time {time.perf_counter() - t0:.0f}s" + (
        f" (shard {i}/{n})." if n > 1 else "."
    )
    if n > 1:
        save_shard(runs, "")
        print(f"shard {i}/{n} done; merge with --mode {mode} --shard 0/{n} --merge")
        return 0
    _write(runs, mode, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
