"""Report and plots of ``qat_quality.py --mode estimators`` (kept apart: one concern per file).

Reads the list of ``Run`` records and writes nothing itself except the summary CSV and the PNG;
``qat_quality._write`` writes the Markdown, the per-run CSV and the JSON.
"""

from __future__ import annotations

import csv
import os
import statistics
from typing import Any

BITS = {"A1W1": 1, "A2W2": 2, "A4W4": 4}
TASKS = (("lm", "Char transformer on Shakespeare (val loss, nats/char)"),
         ("digits", "Digits CNN (test loss; conv1 and fc float)"))  # fmt: skip


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _cells(runs: list[Any], task: str) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = {}
    for r in runs:
        if r.task == task:
            out.setdefault((r.preset, r.estimator), []).append(r)
    return out


def _ok(rs: list[Any], attr: str) -> list[float]:
    return [getattr(r, attr) for r in rs if not r.diverged]


def summary_rows(runs: list[Any], estimators: list[str]) -> list[dict[str, Any]]:
    """One row per (task, preset, estimator): means, spread, wins per seed and cost."""
    rows = []
    for task, _ in TASKS:
        cells = _cells(runs, task)
        ste_cost = _mean([r.sec_per_step for r in runs if r.task == task and r.estimator == "ste"])
        for preset in ["fp32", *BITS]:
            ests = ["-"] if preset == "fp32" else estimators
            # compare on complete seeds only (every estimator ran), so a sweep that stopped
            # early still compares like with like
            have = [{r.seed for r in cells.get((preset, e), [])} for e in ests]
            complete = set.intersection(*have) if have else set()
            best: dict[int, str] = {}
            if preset != "fp32":  # winner per seed = lowest val/test loss
                for s in complete:
                    cand = [(r.val_loss, e) for e in ests for r in cells.get((preset, e), [])
                            if r.seed == s and not r.diverged]  # fmt: skip
                    if cand:
                        best[s] = min(cand)[1]
            for e in ests:
                rs = [r for r in cells.get((preset, e), []) if r.seed in complete]
                if not rs:
                    continue
                cost = _mean([r.sec_per_step for r in rs])
                rows.append({
                    "task": task, "preset": preset, "estimator": e, "seeds": len(rs),
                    "val_loss": _mean(_ok(rs, "val_loss")), "val_loss_sd": _sd(_ok(rs, "val_loss")),
                    "val_acc": _mean(_ok(rs, "val_acc")), "diverged": sum(r.diverged for r in rs),
                    "wins": sum(w == e for w in best.values()) if best else "",
                    "sec_per_step": cost, "cost_vs_ste": cost / ste_cost if ste_cost else "",
                    "bits": "; ".join(r.bits for r in rs if r.bits),
                })  # fmt: skip
    return rows


def report(runs: list[Any], header: str, estimators: list[str]) -> str:
    rows = summary_rows(runs, estimators)
    lines = ["# QAT quality: gradient estimators (ste, ridge, pege, gdnsq)", "", header, "",
             "Mean ± sample std over the seeds on which every estimator ran. *wins* = seeds on which the estimator had the lowest "
             "loss among the four at that preset. Cost = training-loop seconds per step (its "
             "5 short evaluations included), and its ratio to ste on the same task. gdnsq is "
             "scored at the integer widths rqcompile deploys (learned → deployed mean widths "
             "in the last table).", ""]  # fmt: skip
    for task, title in TASKS:
        trs = [r for r in rows if r["task"] == task]
        if not trs:
            continue
        acc = task == "digits"
        lines += [f"## {title}", "",
                  "| preset | estimator | seeds | loss | " + ("acc | " if acc else "")
                  + "wins | diverged | s/step | cost vs ste |",
                  "| --- | --- | --- | --- | " + ("--- | " if acc else "")
                  + "--- | --- | --- | --- |"]  # fmt: skip
        for r in trs:
            cvs = f"{r['cost_vs_ste']:.2f}x" if r["cost_vs_ste"] != "" else ""
            lines.append(
                f"| {r['preset']} | {r['estimator']} | {r['seeds']} | "
                f"{r['val_loss']:.4f} ± {r['val_loss_sd']:.4f} | "
                + (f"{r['val_acc']:.3f} | " if acc else "")
                + f"{r['wins']} | {r['diverged']} | {r['sec_per_step']:.4f} | {cvs} |"
            )
        lines.append("")
    bits = [r for r in rows if r["bits"]]
    if bits:
        lines += ["## gdnsq widths (learned -> deployed, per seed)", "",
                  "| task | preset | widths |", "| --- | --- | --- |"]  # fmt: skip
        lines += [f"| {r['task']} | {r['preset']} | {r['bits']} |" for r in bits]
        lines.append("")
    return "\n".join(lines)


def write_summary_csv(runs: list[Any], path: str, estimators: list[str]) -> None:
    rows = summary_rows(runs, estimators)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(runs: list[Any], path: str, estimators: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    marks = dict(zip(estimators, ("s--", "o-", "^-", "d-")))
    for ax, (task, attr, ylabel) in zip(axes[:2], (
        ("lm", "val_loss", "char transformer val loss (nats/char)"),
        ("digits", "val_acc", "digits CNN test accuracy"),
    )):  # fmt: skip
        cells = _cells(runs, task)
        for e in estimators:
            xs, ys, es = [], [], []
            for preset, b in BITS.items():
                have = [{r.seed for r in cells.get((preset, x), [])} for x in estimators]
                full = set.intersection(*have)
                v = _ok([r for r in cells.get((preset, e), []) if r.seed in full], attr)
                if v:
                    xs.append(b)
                    ys.append(_mean(v))
                    es.append(_sd(v))
            ax.errorbar(xs, ys, yerr=es, fmt=marks.get(e, "o-"), capsize=3, label=e)
        fp = _ok(cells.get(("fp32", "-"), []), attr)
        if fp:
            ax.axhline(_mean(fp), color="k", lw=1, label="fp32")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(BITS.values()), [str(b) for b in BITS.values()])
        ax.set_xlabel("bits (activations = weights)")
        ax.set_ylabel(ylabel)
        ax.legend()
    ax = axes[2]
    width = 0.35
    for i, (task, _) in enumerate(TASKS):
        costs = [_mean([r.sec_per_step for r in runs if r.task == task and r.estimator == e])
                 for e in estimators]  # fmt: skip
        ax.bar([j + i * width for j in range(len(estimators))], costs, width, label=task)
    ax.set_xticks([j + width / 2 for j in range(len(estimators))], estimators)
    ax.set_ylabel("seconds per training step (1 thread)")
    ax.set_title("training cost")
    ax.legend()
    fig.suptitle("Gradient estimators: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_extras(runs: list[Any], out_dir: str, mode: str, estimators: list[str]) -> list[str]:
    """Summary CSV and the PNG; returns their paths."""
    csv_path = os.path.join(out_dir, f"qat_quality_{mode}_summary.csv")
    write_summary_csv(runs, csv_path, estimators)
    return [csv_path, plot(runs, os.path.join(out_dir, f"qat_quality_{mode}.png"), estimators)]
