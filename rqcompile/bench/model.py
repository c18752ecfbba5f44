"""Whole models: the demo char transformer end to end, QAT step cost, and ``lower`` time.

* **End to end**: the demo's 2-layer, width-128 char transformer (``lm_preset("quick")``) at
  a fixed batch, lowered with the LM head kept in float (as the demo does), against torch
  fp32 eager and torch dynamic int8 on the same model; tokens/s and weight bytes. The same
  for one GPT-2-width block (:func:`gpt2_block_model`), where the linears dominate.
* **Training step**: forward + cross-entropy + backward + AdamW step of the same model in
  fp32, STE and ridge QAT (the ridge fit's extra cost is what this measures).
* **Lower time**: ``rq.lower`` (convert + build, no tuning) of a GPT-2-124M-shaped
  ``CharTransformer`` (12 layers, width 768, 12 heads, vocab 50257, untied head kept float).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import rqcompile as rq
from rqcompile.bench.layers import dynamic_int8
from rqcompile.bench.timing import settle, time_interleaved
from rqcompile.demo.models import CharTransformer, param_count
from rqcompile.demo.presets import lm_preset
from rqcompile.errors import VerifyError

__all__ = ["bench_e2e", "bench_lower_time", "bench_train_step", "demo_model", "gpt2_block_model"]

_VOCAB = 65
_KEEP_FLOAT = {"lm_head": None}


def _check_parity(qat: Any, exe: Any, x: torch.Tensor, what: str) -> None:
    """Refuse to time a build that is not the QAT model: every difference must trace back to
    a rounding near-tie (``rq.check_parity``), not a loose tolerance."""
    report = rq.check_parity(qat, exe, x)
    if not report.ok:
        raise VerifyError(f"{what}: {report}\nFix the kernels before timing them.")


def demo_model(seed: int = 0) -> CharTransformer:
    """The demo's quick-size char transformer (0.42M parameters), eval mode."""
    torch.manual_seed(seed)
    return lm_preset("quick").build(_VOCAB).eval()


def gpt2_block_model(seed: int = 0) -> CharTransformer:
    """One GPT-2-124M-width block (width 768, 12 heads, MLP 3072, context 128) on the char
    vocabulary: 7.2M parameters, nearly all in the block's linears (a 50257-word float LM
    head would otherwise be most of the time in every variant)."""
    torch.manual_seed(seed)
    return CharTransformer(_VOCAB, n_layer=1, n_head=12, n_embd=768, block_size=128).eval()


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _const_bytes(exe: Any) -> int:
    return sum(t.numel() * t.element_size() for t in exe.ir.constants.values())


def bench_e2e(
    presets: Sequence[str],
    *,
    batch: tuple[int, int],
    budget_s: float,
    clock: str = "wall",
    log: Callable[[str], None] = print,
    model: CharTransformer | None = None,
    label: str = "char transformer",
    standalone: bool = False,
) -> list[dict[str, Any]]:
    """Tokens/s and weight bytes of ``model`` (default: the demo model): fp32, dynamic int8
    and lowered presets. Interleaved (one call of each per round), or ``standalone``: each
    candidate's calls back to back after a pause (``timing.settle``) and warm-up calls."""
    model = demo_model() if model is None else model
    x = torch.randint(0, _VOCAB, batch)
    fns: dict[str, Callable[[], Any]] = {"fp32": lambda: model(x)}
    dyn = dynamic_int8(copy.deepcopy(model))
    fns["int8-dyn"] = lambda: dyn(x)
    info: dict[str, dict[str, Any]] = {
        "fp32": {"weight_bytes": _param_bytes(model), "build_s": 0.0},
        "int8-dyn": {"weight_bytes": None, "build_s": 0.0},
    }
    with torch.no_grad():
        for p in presets:
            qat = rq.prepare(model, (x,), p, overrides=_KEEP_FLOAT).eval()
            t0 = time.perf_counter()
            ir = rq.convert(qat)
            exe = rq.build(ir, target="llvm")
            build_s = time.perf_counter() - t0
            # whole model: a 1e-7 float difference upstream can flip an activation code at a
            # rounding tie and the flip propagates (5e-2 of the output at A4W4), so the check
            # is tie-aware: every difference must trace back to a near-tie, then agree to 1e-5.
            _check_parity(qat, exe, x, f"{label} {p}")  # tie-aware (rqcompile/parity.py)
            fns[p] = lambda exe=exe: exe(x)
            info[p] = {"weight_bytes": _const_bytes(exe), "build_s": build_s}
        if standalone:  # each after a pause: the previous one's pool threads stop spinning
            stats = {}
            for k, f in fns.items():
                settle()
                stats[k] = time_interleaved({k: f}, budget_s=budget_s, clock=clock, warmup=3)[k]
        else:
            stats = time_interleaved(fns, budget_s=budget_s, clock=clock)
    tokens = batch[0] * batch[1]
    base = stats["fp32"].median
    rows = []
    for name, s in stats.items():
        rows.append({"name": name, "seconds": s.median, "spread": s.spread, "repeats": s.n,
                     "tokens_per_s": tokens / s.median, "vs_fp32": base / s.median,
                     **info[name]})  # fmt: skip
        log(f"  {label} {name}: {tokens / s.median:,.0f} tokens/s ({base / s.median:.2f}x fp32)")
    return rows


def bench_train_step(
    presets: Sequence[str],
    *,
    batch: tuple[int, int],
    budget_s: float,
    clock: str = "wall",
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Seconds per training step: fp32, then STE and ridge QAT for each preset."""
    base = demo_model()
    x = torch.randint(0, _VOCAB, batch)
    y = torch.randint(0, _VOCAB, batch)
    models: dict[str, nn.Module] = {"fp32": copy.deepcopy(base).train()}
    for p in presets:
        for est in ("ste", "ridge"):
            models[f"{p} {est}"] = rq.prepare(
                base, (x,), p, estimator=est, overrides=_KEEP_FLOAT
            ).train()

    def step_fn(m: nn.Module) -> Callable[[], None]:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)

        def step() -> None:
            logits = m(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    stats = time_interleaved({k: step_fn(m) for k, m in models.items()}, budget_s=budget_s,
                             min_repeats=5, clock=clock)  # fmt: skip
    rows = []
    for name, s in stats.items():
        ste = stats.get(name.replace("ridge", "ste"))
        vs_ste = s.median / ste.median if ste is not None and "ridge" in name else None
        rows.append({"name": name, "seconds": s.median, "spread": s.spread, "repeats": s.n,
                     "vs_fp32": s.median / stats["fp32"].median, "ridge_vs_ste": vs_ste})
        extra = f", {vs_ste:.2f}x STE" if vs_ste is not None else ""
        log(f"  train step {name}: {s.median * 1e3:.1f} ms "
            f"({s.median / stats['fp32'].median:.2f}x fp32{extra})")  # fmt: skip
    return rows


def bench_lower_time(
    *, n_layer: int, preset: str = "A8W8", log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Seconds for ``prepare`` and ``lower`` of a GPT-2-124M-shaped model with ``n_layer`` blocks.

    12 blocks is the 124M shape (163M parameters with the untied 50257 x 768 head).
    """
    torch.manual_seed(0)
    model = CharTransformer(50257, n_layer=n_layer, n_head=12, n_embd=768, block_size=1024)
    ex = (torch.zeros(1, 64, dtype=torch.long),)
    t0 = time.perf_counter()
    qat = rq.prepare(model, ex, preset, overrides=_KEEP_FLOAT).eval()
    t1 = time.perf_counter()
    ir = rq.convert(qat)
    t2 = time.perf_counter()
    exe = rq.build(ir, target="llvm")
    t3 = time.perf_counter()
    with torch.no_grad():
        exe(*ex)
    row = {"n_layer": n_layer, "params": param_count(model), "preset": preset,
           "prepare_s": t1 - t0, "convert_s": t2 - t1, "build_s": t3 - t2,
           "lower_s": t3 - t1}  # fmt: skip
    log(f"  lower GPT-2 shape ({n_layer} layers, {row['params'] / 1e6:.0f}M params, {preset}): "
        f"prepare {t1 - t0:.1f}s, convert {t2 - t1:.1f}s, build {t3 - t2:.1f}s")  # fmt: skip
    return row
