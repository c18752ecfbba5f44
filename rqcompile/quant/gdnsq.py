"""GDNSQ: gradient-descent noisy-channel quantization (docs/method.md#gdnsq; arXiv:2508.14004).

Layers are noisy channels whose capacity shrinks with bit width; fine-tuning is smooth
constrained optimisation: a fully differentiable STE with a **learnable bit width** and
**clamp bounds**, an **exterior-point penalty** driving the average bit width to the target,
and optional distillation (:func:`rqcompile.quant.hooks.distill_loss`). The source gives no
formulas; this is rqcompile's formulation (docs/method.md#gdnsq; rqcompile's choices):

Per block (``mn``, ``mx`` the block's min and max, ``R = mx - mn``, all detached)::

    l = mn + c_lo·R,   u = mx - c_hi·R                 # clamp bounds, c ∈ [0, 0.45]
    Δ = (u - l) / (2^β - 1)                             # noise scale (step)
    x_c = clamp(x, l, u)
    ε = detach(round((x_c - l)/Δ) - (x_c - l)/Δ)       # rounding noise
    y = x_c + Δ·ε   (= Δ·code + l: the STE dequantizer with s_f = Δ, b_f = l)

``∂y/∂Δ = ε`` trains β (through Δ) and the bounds. The bit width is
``β = clamp(b_t + e, 1, 8)`` where ``e`` is a learned per-quantizer parameter and ``b_t`` the
annealed target, linear from ``start_bits`` (8) down to the layer's preset width over
``anneal_steps``. The loss adds ``μ_t·max(0, mean_i(β_i - b_t,i))²`` over every gdnsq quantizer
(``rq.aux_loss``), with ``μ_t = penalty·penalty_growth^(t // epoch_steps)``.

Deviations from docs/method.md#gdnsq, with reasons:

* β is parametrised as schedule + learned excess ``e`` rather than a free parameter: Adam moves
  a scalar by about ``lr`` per step, so a free β starting at 8 could not reach 1 bit in a few
  hundred steps. Layers still trade bits through ``e`` under the penalty on the mean.
* Clamp bounds are learned as fractions of each block's range (one pair per weight
  quantizer), and only for weights. Activations are quantized at run time by ``rq.quantize``
  from their own min/max, which carries no learned tensors; their bit width is learned.
* ``convert`` rounds β to the *nearest* integer in 1..8 (docs/method.md suggests snapping up to
  {1, 2, 4, 8}): the exterior-point penalty approaches the target from above, so snapping up
  would turn 2.01 learned bits into 4 deployed bits. It warns (``RQWarning``, naming the layer)
  whenever the rounding changes the model.
* At an integer width ``b`` the codes are the affine alphabet ``0..2^b-1``; at ``b = 1`` they
  are mapped to ±1 (``code' = 2c - 1``, ``scale = Δ/2``, ``offset = l + Δ/2``) so the XNOR
  kernels apply. With ``c = 0`` and ``b ≥ 2`` this is exactly the STE affine quantizer.

Supports affine (non-symmetric), dense layer specs only.
"""

from __future__ import annotations

import math
import warnings
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from rqcompile.errors import ConfigError, NumericsError, RQWarning
from rqcompile.quant.result import FakeQuantResult
from rqcompile.quant.primitives import EPS, QFormat

__all__ = [
    "OPTIONS",
    "GDNSQState",
    "check_spec",
    "deployed_bits",
    "gdnsq_blocks",
    "group_loss",
    "runtime_blocks",
]

#: ``estimator_options`` accepted by ``estimator="gdnsq"`` and their defaults.
OPTIONS = MappingProxyType(
    {
        "anneal_steps": 1000,
        "start_bits": 8.0,
        "penalty": 1.0,
        "penalty_growth": 1.5,
        "epoch_steps": 100,
    }
)

MAX_CLIP = 0.45  # each bound may cut at most 45% of the block range, so l < u


def check_spec(spec: Any) -> str | None:
    """Why ``spec`` cannot use gdnsq, or ``None``."""
    ops = [spec.weight] + ([spec.activation] if spec.activation is not None else [])
    if spec.sparsity is not None or any(q.symmetric for q in ops):
        return (
            "gdnsq learns affine clamp bounds, so it supports affine, dense specs only "
            "(e.g. 'A2W2', 'A4W1'); use estimator='ridge' or 'ste' for symmetric, ternary or "
            "N:M-sparse layers"
        )
    return None


def gdnsq_blocks(
    xb: torch.Tensor,
    bits: torch.Tensor,
    clip: torch.Tensor,
    *,
    final_bits: int | None = None,
    noise: torch.Tensor | None = None,
) -> FakeQuantResult:
    """The gdnsq quantizer on blocks ``(..., nb, B)`` (formula in the module docstring).

    Args:
        xb: values, blocks along the last dim (fp32 or fp64).
        bits: the (real) bit width β, a 0-d tensor (may require grad).
        clip: ``(c_lo, c_hi)``, fractions of each block's range cut at either end.
        final_bits: the integer width when β is final (convert, run time); selects the code
            alphabet of the returned codes (±1 at 1 bit). ``None`` while training.
        noise: a fixed rounding noise ``ε`` instead of ``round(z) - z`` (the additive-noise
            model in which ``∂y/∂Δ = ε`` is the exact derivative; used by gradient checks).
    """
    dtype = xb.dtype
    x = xb if xb.dtype == torch.float64 else xb.float()
    with torch.no_grad():
        mn, mx = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        rng = mx - mn
    c = clip.to(x.dtype).clamp(0.0, MAX_CLIP)
    lo = mn + c[0] * rng
    hi = mx - c[1] * rng
    levels = torch.pow(2.0, bits.to(x.dtype)) - 1
    delta = ((hi - lo) / levels).clamp_min(EPS)
    xc = torch.minimum(torch.maximum(x, lo), hi)
    z = (xc - lo) / delta
    code = torch.round(z.detach()) if noise is None else (z + noise).detach()
    if final_bits is not None:
        code = code.clamp(0, 2**final_bits - 1)
    q = z + (code - z).detach()
    y = delta * q + lo
    if final_bits == 1:  # ±1 alphabet for the XNOR kernels: Δ·c + l = (Δ/2)(2c-1) + l + Δ/2
        half = delta / 2
        return FakeQuantResult(y=y.to(dtype), codes=2 * code - 1, scale=half, offset=lo + half)
    return FakeQuantResult(y=y.to(dtype), codes=code, scale=delta, offset=lo)


def runtime_blocks(
    xb: torch.Tensor, fmt: QFormat, *, lam: float = 0.0, nm: tuple[int, int] | None = None
) -> FakeQuantResult:
    """Stateless gdnsq at a fixed integer width with no clamp: the run-time activation quantizer."""
    if fmt.symmetric or fmt.bits == 1.5 or nm is not None:
        raise NumericsError(
            f"gdnsq quantizes affine dense operands only, got bits={fmt.bits} "
            f"symmetric={fmt.symmetric} sparsity={nm}."
        )
    b = int(fmt.bits)
    zero = torch.zeros(2, dtype=xb.dtype if xb.dtype == torch.float64 else torch.float32)
    return gdnsq_blocks(xb, torch.tensor(float(b)), zero, final_bits=b)


def deployed_bits(beta: float) -> int:
    """The integer width ``convert`` deploys for a learned β: nearest in 1..8, ties up.

    Example:
        >>> deployed_bits(2.4), deployed_bits(2.5), deployed_bits(0.7), deployed_bits(9.2)
        (2, 3, 1, 8)
    """
    return int(min(max(math.floor(beta + 0.5), 1), 8))


class GDNSQState(nn.Module):
    """Learned width and clamp bounds of one quantizer, plus the schedule step.

    Parameters: ``bits_excess`` (``e``; β = annealed target + e) and, for weights, ``clip``
    (``c_lo, c_hi``). Buffers: ``step`` and ``final_bits`` (0 while learning; the rounded
    width once ``convert`` finalized a copy).
    """

    def __init__(self, *, role: str, goal: float, options: dict[str, Any]) -> None:
        super().__init__()
        self.role = role
        self.goal = float(goal)
        self.anneal_steps = int(options["anneal_steps"])
        self.start_bits = float(options["start_bits"])
        self.penalty = float(options["penalty"])
        self.penalty_growth = float(options["penalty_growth"])
        self.epoch_steps = int(options["epoch_steps"])
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("final_bits", torch.zeros((), dtype=torch.long))
        self.bits_excess = nn.Parameter(torch.zeros(()))
        if role == "weight":
            self.clip = nn.Parameter(torch.zeros(2))
        else:
            self.register_buffer("clip", torch.zeros(2))

    @classmethod
    def create(cls, *, role: str, spec: Any, options: dict[str, Any], layer: str) -> GDNSQState:
        if options["anneal_steps"] < 0 or options["epoch_steps"] < 1 or options["penalty"] < 0:
            raise ConfigError(
                f"layer {layer!r}: gdnsq needs anneal_steps >= 0, epoch_steps >= 1 and "
                f"penalty >= 0, got {options}."
            )
        if not 1 <= options["start_bits"] <= 8:
            raise ConfigError(
                f"layer {layer!r}: gdnsq start_bits={options['start_bits']} must be in [1, 8]."
            )
        return cls(role=role, goal=float(spec.bits), options=options)

    # -- schedule -------------------------------------------------------------------------
    def target(self) -> float:
        """Annealed target ``b_t``: ``start_bits`` → the preset width over ``anneal_steps``."""
        t = int(self.step)
        start = max(self.start_bits, self.goal)
        if self.anneal_steps == 0 or t >= self.anneal_steps:
            return self.goal
        return start + (self.goal - start) * t / self.anneal_steps

    def mu(self) -> float:
        return self.penalty * self.penalty_growth ** (int(self.step) // self.epoch_steps)

    def bits(self) -> torch.Tensor:
        """β as a 0-d tensor: the final integer width, or ``clamp(b_t + e, 1, 8)``."""
        if int(self.final_bits) > 0:
            return self.final_bits.to(self.bits_excess.dtype)
        return (self.target() + self.bits_excess).clamp(1.0, 8.0)

    def advance(self) -> int:
        self.step += 1
        return int(self.step)

    # -- forward --------------------------------------------------------------------------
    def fake_quant(self, xb: torch.Tensor) -> FakeQuantResult:
        final = int(self.final_bits) or None
        return gdnsq_blocks(xb, self.bits(), self.clip, final_bits=final)

    def after_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    def finalize_(self, quantizer: Any) -> int:
        """Round β for ``convert`` (on a copy), warning when that changes the model."""
        beta = float(self.bits().detach())
        b = deployed_bits(beta)
        if abs(beta - b) > 1e-6:
            warnings.warn(
                f"layer {quantizer.layer!r} ({quantizer.role}): learned bit width {beta:.3f} "
                f"is deployed as {b} bits, so the lowered model differs from the QAT forward. "
                "Train until the gdnsq penalty reaches the target (more steps, a larger "
                "'penalty', or a shorter 'anneal_steps') to deploy what was trained.",
                RQWarning,
                stacklevel=3,
            )
        self.final_bits.fill_(b)
        return b

    def describe(self) -> str:
        c = self.clip.detach().clamp(0.0, MAX_CLIP).tolist()
        beta = float(self.bits().detach())
        return f"β={beta:.2f} (target {self.target():g}) clip=({c[0]:.2f}, {c[1]:.2f})"

    def extra_repr(self) -> str:
        return self.describe()


def group_loss(states: list[GDNSQState]) -> torch.Tensor | None:
    """Exterior-point penalty ``μ_t·max(0, mean_i(β_i - b_t,i))²`` over all gdnsq quantizers."""
    live = [s for s in states if int(s.final_bits) == 0]
    if not live:
        return None
    excess = torch.stack([s.bits() - s.target() for s in live]).mean()
    return live[0].mu() * torch.relu(excess).pow(2)
