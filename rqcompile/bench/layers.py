"""One linear layer ``[M, K] x [K, N]``: torch fp32, torch dynamic int8, and our lowered presets.

Each rqcompile candidate is the whole lowered layer (activation quantization, integer GEMM,
fused rank-1 epilogue, bias), built with ``rq.build(rq.convert(qat), "llvm")`` from an
untrained ``rq.prepare``: speed does not depend on the weights' values. Before timing, its
output is checked once against the ``reference`` target (the oracle); a mismatch aborts the
benchmark. Torch's candidates run under ``torch.no_grad`` with the same thread count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

import rqcompile as rq
from rqcompile.bench.timing import Stat, time_interleaved
from rqcompile.errors import VerifyError

__all__ = ["BASELINES", "LayerResult", "bench_layer", "check_against_reference", "dynamic_int8"]

BASELINES = ("fp32", "int8-dyn")


@dataclass(frozen=True)
class LayerResult:
    """One candidate at one shape; ``seconds`` is the median per call."""

    k: int
    n: int
    m: int
    name: str
    seconds: float
    spread: float
    repeats: int
    build_s: float = 0.0

    def gmacs(self) -> float:
        """Multiply-accumulates per second, in billions (binary MACs for A1W1)."""
        return self.m * self.n * self.k / self.seconds / 1e9

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def dynamic_int8(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` (fbgemm int8) of every ``nn.Linear``."""
    with warnings.catch_warnings():  # torch deprecates the eager API in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def check_against_reference(ir: rq.ir.Module, exe: Any, inputs: Sequence[torch.Tensor],
                            what: str, tol: float = 1e-4) -> None:  # fmt: skip
    """Raise ``VerifyError`` unless ``exe`` matches the reference target on ``inputs``.

    The tolerance is relative to the output's magnitude: integer cores are bit-exact, float
    epilogues differ in summation order only (~1e-6).
    """
    ref = rq.build(ir, target="reference")
    want, got = ref(*inputs), exe(*inputs)
    err = (got.double() - want.double()).abs().max().item()
    mag = want.double().abs().max().item()
    if not err <= tol * max(mag, 1e-30):
        raise VerifyError(
            f"{what}: the llvm build differs from the reference target by {err:.3e} "
            f"(output magnitude {mag:.3e}); fix the kernel before timing it."
        )


def bench_layer(
    k: int,
    n: int,
    ms: Sequence[int],
    presets: Sequence[str],
    *,
    budget_s: float,
    clock: str = "wall",
    log: Callable[[str], None] = print,
    seed: int = 0,
) -> list[LayerResult]:
    """Time fp32, dynamic int8 and every preset at ``K x N`` for each batch ``M`` in ``ms``."""
    import time

    torch.manual_seed(seed)
    lin = nn.Sequential(nn.Linear(k, n)).eval()
    dyn = dynamic_int8(lin)
    results: list[LayerResult] = []
    qats = {}
    for p in presets:
        x0 = torch.randn(max(ms), k)
        qats[p] = rq.prepare(lin, (x0,), p).eval()
    for m in ms:
        x = torch.randn(m, k)
        fns: dict[str, Callable[[], Any]] = {}
        builds: dict[str, float] = {}
        with torch.no_grad():
            fns["fp32"] = lambda x=x: lin(x)
            fns["int8-dyn"] = lambda x=x: dyn(x)
            for p, qat in qats.items():
                t0 = time.perf_counter()
                ir = rq.convert(qat, example_inputs=(x,))
                exe = rq.build(ir, target="llvm")
                builds[p] = time.perf_counter() - t0
                check_against_reference(ir, exe, (x,), f"{p} K={k} N={n} M={m}")
                fns[p] = lambda exe=exe, x=x: exe(x)
            stats: dict[str, Stat] = time_interleaved(fns, budget_s=budget_s, clock=clock)
        base = stats["fp32"].median
        dq = stats["int8-dyn"].median
        parts = []
        for name, s in stats.items():
            results.append(LayerResult(k, n, m, name, s.median, s.spread, s.n, builds.get(name, 0)))
            parts.append(f"{name} {s.median * 1e6:.0f}us ({base / s.median:.2f}x fp32, "
                         f"{dq / s.median:.2f}x int8)")  # fmt: skip
        log(f"  K=N={k} M={m}: " + "; ".join(parts))
    return results
