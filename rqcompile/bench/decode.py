"""Batch-1 text generation on a GPT-2-small-shaped model: prefill and decode tokens/s.

``main(argv)`` (``python benchmarks/decode.py``) generates ``--new`` tokens (default 128)
after a ``--prompt``-token prompt (default 128), batch 1, greedy, and reports prefill and
decode tokens/s for

* **peers**: Hugging Face ``GPT2LMHeadModel`` built from a config (12 layers, width 768, 12
  heads, vocab 50257; random weights, nothing downloaded) running HF ``generate`` with its
  own KV cache, in torch fp32 eager and in torch dynamic int8 (``quantize_dynamic`` of every
  ``nn.Linear``; GPT-2's ``Conv1D`` layers are swapped for equivalent ``nn.Linear`` first, or
  int8 would leave them in float);
* **ours**: the demo's :class:`~rqcompile.demo.models.CharTransformer` with the same shapes
  (GPT-2's architecture: pre-LN blocks, learned positions, GELU MLP of 4x width, untied LM
  head), prepared at each preset with *every* linear quantized, the LM head included (as
  torch int8 does), lowered to ``llvm`` and run with ``exe.generate``.

Prefill and decode are separated the same way for every candidate: ``t1`` = generating one
token (prefill + one step), ``tN`` = generating ``N`` tokens; prefill tokens/s =
``prompt / t1``, decode tokens/s = ``(N - 1) / (tN - t1)``. Candidates are interleaved (one
generation of each per round, same process, same threads) and each cell is the median of
``--rounds`` rounds, at every thread count of ``--threads`` (default: 1 and all cores).
Results go to ``--out`` (``benchmarks/decode.py`` writes the repository's
``benchmarks/results/decode_<date>.{md,json}``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["GPT2_SMALL", "main", "markdown", "run"]

#: GPT-2 small (124M): the shapes every candidate uses.
GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 50257}
PRESETS = ("A8W8", "A4W4", "W4", "A1W1")


def _hf_gpt2(cfg: dict[str, int], ctx: int) -> nn.Module:
    import transformers as T

    torch.manual_seed(0)
    c = T.GPT2Config(n_layer=cfg["n_layer"], n_embd=cfg["n_embd"], n_head=cfg["n_head"],
                     vocab_size=cfg["vocab"], n_positions=ctx, bos_token_id=0, eos_token_id=0,
                     pad_token_id=0)  # fmt: skip
    return T.GPT2LMHeadModel(c).eval()


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Swap every HF ``Conv1D`` (``x @ W + b`` with ``W`` of shape (in, out)) for the same
    ``nn.Linear``, so ``torch.ao.quantization.quantize_dynamic`` quantizes it."""
    for name, mod in list(model.named_modules()):
        if type(mod).__name__ != "Conv1D":
            continue
        w = mod.weight.detach()
        lin = nn.Linear(w.shape[0], w.shape[1], bias=mod.bias is not None)
        lin.weight.data.copy_(w.t())
        if mod.bias is not None:
            lin.bias.data.copy_(mod.bias.detach())
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, lin)
    return model


def _hf_generate(model: nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def gen(ids: torch.Tensor, n: int) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  use_cache=True, attention_mask=torch.ones_like(ids))  # fmt: skip

    return gen


def decode_bytes(ir: Any) -> tuple[int, int]:
    """``(weight bytes, cache bytes)`` of a ``decode`` function: the constants it streams per
    token (embedding and position tables are gathered, one row each, so not counted) and the
    total size of its cache arguments (all rows, all layers)."""
    f = ir.func("decode")
    gathered = {op.operands[1].id for op in f.ops if op.name == "rq.embedding"}
    gathered |= {op.operands[0].id for op in f.ops if op.name == "rq.take"}
    names = {str(op.attr("name")) for op in f.ops
             if op.name == "rq.const" and op.result.id not in gathered}  # fmt: skip
    weights = sum(ir.constant(n).numel() * ir.constant(n).element_size() for n in names)
    caches = sum(math.prod(int(d) for d in a.type.shape) * 4 for a in f.args[2:])
    return weights, caches


def _rq_generate(preset: str, cfg: dict[str, int], ctx: int, log: Callable[[str], None],
                 in_place: bool = True) -> tuple[
        Callable[[torch.Tensor, int], torch.Tensor], dict[str, Any]]:  # fmt: skip
    import rqcompile as rq
    from rqcompile.demo.models import CharTransformer
    from rqcompile.ir.verify import verify
    from rqcompile.passes.infra import PassContext, PassManager
    from rqcompile.passes.ir.kv_cache import KVCache

    torch.manual_seed(0)
    model = CharTransformer(cfg["vocab"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                            n_embd=cfg["n_embd"], block_size=ctx).eval()  # fmt: skip
    ex = (torch.zeros(1, ctx, dtype=torch.long),)
    t0 = time.perf_counter()
    qat = rq.prepare(model, ex, preset).eval()
    ir = rq.convert(qat)
    ctx_ = PassContext.current().for_stage()
    ir = PassManager([KVCache(in_place=in_place)], verifier=verify).run(ir, ctx_)
    exe = rq.build(ir, "llvm")
    build_s = time.perf_counter() - t0
    log(f"  built {preset}{'' if in_place else ' (select cache)'} in {build_s:.0f} s")
    wbytes = sum(t.numel() * t.element_size() for t in exe.ir.constants.values())
    streamed, cache = decode_bytes(exe.ir)

    def gen(ids: torch.Tensor, n: int) -> torch.Tensor:
        return exe.generate(ids, max_new_tokens=n, temperature=0.0)

    return gen, {"build_s": build_s, "weight_bytes": wbytes, "decode_weight_bytes": streamed,
                 "cache_bytes": cache, "in_place": in_place}  # fmt: skip


def run(*, threads: Sequence[int], prompt: int, new: int, rounds: int,
        presets: Sequence[str], n_layer: int = GPT2_SMALL["n_layer"], select: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    from rqcompile.bench.layers import dynamic_int8

    cfg = {**GPT2_SMALL, "n_layer": n_layer}
    ctx = prompt + new
    fp32 = _hf_gpt2(cfg, ctx)
    int8 = dynamic_int8(conv1d_to_linear(copy.deepcopy(fp32)))
    cands: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
        "torch-fp32 (HF cache)": _hf_generate(fp32),
        "torch-int8-dyn (HF cache)": _hf_generate(int8),
    }
    info: dict[str, dict[str, Any]] = {
        k: {"weight_bytes": None, "build_s": 0.0} for k in cands}
    info["torch-fp32 (HF cache)"]["weight_bytes"] = sum(
        p.numel() * p.element_size() for p in fp32.parameters())
    for p in presets:
        log(f"lowering {p} (GPT-2-small shapes, context {ctx}) ...")
        cands[f"rq {p}"], info[f"rq {p}"] = _rq_generate(p, cfg, ctx, log)
        if select:  # the earlier decode (full-cache select), interleaved with the new one
            name = f"rq {p} (select cache)"
            cands[name], info[name] = _rq_generate(p, cfg, ctx, log, in_place=False)
    ids = torch.randint(0, cfg["vocab"], (1, prompt), generator=torch.Generator().manual_seed(1))
    out: dict[str, Any] = {"threads": {}, "info": info, "model": cfg}
    for t in threads:
        torch.set_num_threads(t)
        for gen in cands.values():  # warm-up (first-call costs, thread pools)
            gen(ids, 2)
        t1: dict[str, list[float]] = {k: [] for k in cands}
        tn: dict[str, list[float]] = {k: [] for k in cands}
        for r in range(rounds):
            for name, gen in cands.items():
                s = time.perf_counter()
                gen(ids, 1)
                t1[name].append(time.perf_counter() - s)
                s = time.perf_counter()
                gen(ids, new)
                tn[name].append(time.perf_counter() - s)
            log(f"  threads {t}: round {r + 1}/{rounds} done")
        cells = {}
        for name in cands:
            a, b = statistics.median(t1[name]), statistics.median(tn[name])
            cells[name] = {"t1_s": a, "tN_s": b, "prefill_tok_s": prompt / a,
                           "decode_tok_s": (new - 1) / max(b - a, 1e-9)}  # fmt: skip
            log(f"  threads {t} {name}: prefill {prompt / a:,.0f} tok/s, "
                f"decode {cells[name]['decode_tok_s']:,.1f} tok/s")
        out["threads"][str(t)] = cells
    return out


def markdown(data: dict[str, Any], cmd: str) -> str:
    env = data["env"]
    m = data["model"]
    lines = [f"# Batch-1 generation, GPT-2-small shapes ({env['date']})", "",
             f"Model: {m['n_layer']} layers, width {m['n_embd']}, {m['n_head']} heads, vocab "
             f"{m['vocab']}.", "",
             f"Generated by `{cmd}` on {env['cpu']} ({env['cores']} cores, LLVM mcpu "
             f"`{env.get('mcpu', '?')}`), torch "
             f"{env['torch']}; prompt {data['prompt']} tokens, {data['new']} new tokens, greedy, "
             f"median of {data['rounds']} interleaved rounds. Peers: HF `GPT2LMHeadModel` with "
             "its KV cache; ours: the same shapes as a `CharTransformer`, every linear "
             "quantized (LM head included), `exe.generate`. Random weights.", ""]  # fmt: skip
    for t, cells in data["threads"].items():
        base = cells.get("torch-int8-dyn (HF cache)", {}).get("decode_tok_s")
        lines += [f"## {t} thread(s)", "",
                  "| candidate | prefill tok/s | decode tok/s | decode vs torch int8 | weight MB "
                  "| decode MB/token (weights + cache) | GB/s |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, c in cells.items():
            inf = data["info"][name]
            wb = inf["weight_bytes"]
            rel = f"{c['decode_tok_s'] / base:.2f}x" if base else "-"
            per = token_bytes(inf, data["prompt"], data["new"])
            traffic = "-" if per is None else f"{per[0] / 1e6:.1f} + {per[1] / 1e6:.1f}"
            gbs = "-" if per is None else f"{sum(per) * c['decode_tok_s'] / 1e9:.2f}"
            lines.append(f"| {name} | {c['prefill_tok_s']:,.0f} | {c['decode_tok_s']:,.1f} | "
                         f"{rel} | {'-' if wb is None else f'{wb / 1e6:.0f}'} | {traffic} "
                         f"| {gbs} |")  # fmt: skip
        lines.append("")
    lines += ["Decode MB/token: the weights the decode function streams per token (gathered "
              "embedding rows not counted) + the cache bytes it moves: with in-place writes, "
              "the live rows attention reads (`pos + 1` of the context, averaged over the "
              "steps); with the select cache, 3x the whole cache (the merge reads it and "
              "writes a new one, attention reads that). GB/s = that x decode tok/s.", ""]
    return "\n".join(lines)


def token_bytes(info: dict[str, Any], prompt: int, new: int) -> tuple[float, float] | None:
    """``(weight bytes, cache bytes)`` one decode step moves, averaged over the ``new - 1``
    steps (see :func:`markdown`); ``None`` for the peers."""
    if info.get("cache_bytes") is None:
        return None
    cache, ctx = float(info["cache_bytes"]), prompt + new
    if info.get("in_place", True):
        steps = range(1, max(new, 2))  # step i decodes position prompt + i - 1: i+prompt rows
        moved = cache * statistics.mean((prompt + i) / ctx for i in steps)
    else:
        moved = 3 * cache
    return float(info["decode_weight_bytes"]), moved


def main(argv: Sequence[str] | None = None) -> int:
    from rqcompile.bench.report import write_atomic
    from rqcompile.bench.timing import environment

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--layers", type=int, default=GPT2_SMALL["n_layer"],
                    help="fewer layers for a quick smoke run (the report says so)")
    ap.add_argument("--select", action="store_true",
                    help="also run each preset with the earlier decode (kv-cache in_place=False: "
                         "a full-cache select per layer per token), interleaved")
    ap.add_argument("--out", default="rq-bench")
    ap.add_argument("--suffix", default="", help="appended to the result files' stem "
                    "decode_<date>, e.g. _inplace")
    a = ap.parse_args(argv)
    threads = tuple(dict.fromkeys(int(x) for x in a.threads.split(",")))
    presets = tuple(p for p in a.presets.split(",") if p)
    data = run(threads=threads, prompt=a.prompt, new=a.new, rounds=a.rounds, presets=presets,
               n_layer=a.layers, select=a.select)
    data.update(prompt=a.prompt, new=a.new, rounds=a.rounds, env=environment(max(threads)))
    data["env"].setdefault("date", datetime.date.today().isoformat())
    data["env"].setdefault("cores", os.cpu_count())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"decode_{data['env']['date'][:10]}{a.suffix}"
    cmd = "python benchmarks/decode.py " + " ".join(argv or [])
    write_atomic(stem.with_suffix(".json"), json.dumps(data, indent=1, default=str))
    write_atomic(stem.with_suffix(".md"), markdown(data, cmd.strip()))
    print(f"wrote {stem}.md")
    return 0
