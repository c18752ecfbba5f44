"""PEGE: progressive element-wise gradient estimation (docs/method.md#pege; arXiv:2509.00097).

STE ignores the discretization error. PEGE instead replaces full-precision values by quantized
ones *progressively, element by element*, on a logarithmic curriculum, and minimizes the task
loss and the discretization error jointly. The source publishes no formulas; this is
rqcompile's formulation (docs/method.md#pege):

1. Ratio ``r_t = ln(1 + (e - 1)·min(t / T, 1))``: 0 at step 0, 1 from step ``T`` on
   (``T = ramp_steps``; docs/method.md recommends half of training).
2. Each training forward draws ``M ~ Bernoulli(r_t)`` per element and returns
   ``y = M⊙Q(x) + (1 - M)⊙x``, where ``Q`` is the STE fake quantizer (``s_f·q + b_f``).
   Gradients: ``Q``'s straight-through gradient on the quantized elements, the identity on the
   float ones.
3. Weights add ``γ·mean((W - detach(Q(W)))²)`` (``γ = gamma``, default 1e-4), which pulls each
   weight toward its grid point; ``rq.aux_loss(model)`` collects it.
4. The step ``t`` is a ``long`` buffer advanced by ``rq.step(model)`` (so it is saved in
   ``state_dict`` and broadcast by DDP like any buffer).
5. ``rq.convert`` requires ``r_t = 1`` (the curriculum finished); eval mode always runs the
   fully quantized forward, i.e. the model ``convert`` deploys.

Cost: one Bernoulli draw and one ``where`` per quantized tensor per step, plus a squared
error on each weight; the deployed model is exactly the STE one.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from rqcompile.errors import ConfigError

__all__ = ["OPTIONS", "PEGEState", "group_loss", "pege_ratio"]

#: ``estimator_options`` accepted by ``estimator="pege"`` and their defaults.
OPTIONS = MappingProxyType({"ramp_steps": 1000, "gamma": 1e-4})


def pege_ratio(step: int, ramp_steps: int) -> float:
    """Fraction of elements quantized at ``step``: ``ln(1 + (e-1)·min(step/T, 1))``.

    Example:
        >>> pege_ratio(0, 100), round(pege_ratio(50, 100), 4), pege_ratio(100, 100)
        (0.0, 0.6201, 1.0)
    """
    frac = min(step / ramp_steps, 1.0) if ramp_steps > 0 else 1.0
    return 1.0 if frac >= 1.0 else math.log1p((math.e - 1.0) * frac)


class PEGEState(nn.Module):
    """Curriculum state of one quantizer: a step buffer, the ramp length and γ.

    Args:
        role: ``"weight"`` or ``"activation"``; only weights get the discretization loss.
        ramp_steps: steps ``T`` until every element is quantized.
        gamma: weight of the discretization-error loss ``γ·mean((W - detach(Q(W)))²)``.
    """

    def __init__(self, *, role: str, ramp_steps: int, gamma: float) -> None:
        super().__init__()
        self.role = role
        self.ramp_steps = int(ramp_steps)
        self.gamma = float(gamma)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._aux: torch.Tensor | None = None  # this forward's discretization loss (weights)

    @classmethod
    def create(cls, *, role: str, spec: Any, options: dict[str, Any], layer: str) -> PEGEState:
        if options["ramp_steps"] < 0 or options["gamma"] < 0:
            raise ConfigError(
                f"layer {layer!r}: pege needs ramp_steps >= 0 and gamma >= 0, got "
                f"{options}. Use e.g. estimator_options={{'ramp_steps': steps // 2}}."
            )
        return cls(role=role, ramp_steps=options["ramp_steps"], gamma=options["gamma"])

    def ratio(self) -> float:
        """The current quantized fraction ``r_t``."""
        return pege_ratio(int(self.step), self.ramp_steps)

    def advance(self) -> int:
        self.step += 1
        return int(self.step)

    def after_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mix float ``x`` and quantized ``y`` element-wise (training only) and record the loss."""
        if not self.training:
            self._aux = None
            return y
        if self.role == "weight" and self.gamma > 0:
            self._aux = self.gamma * (x.float() - y.detach().float()).pow(2).mean()
        r = self.ratio()
        if r >= 1.0:
            return y
        keep_q = torch.rand(y.shape, device=y.device) < r  # M ~ Bernoulli(r_t), no gradient
        return torch.where(keep_q, y, x)

    def aux_loss(self) -> torch.Tensor | None:
        return self._aux

    def fake_quant(self, xb: torch.Tensor) -> None:
        return None  # the standard STE grid and codes

    def __getstate__(self) -> dict[str, Any]:
        # the recorded loss is a graph node of the last forward: never copy or pickle it
        return {**super().__getstate__(), "_aux": None}

    def finalize_(self, quantizer: Any) -> None:  # the width does not change
        """``convert`` deploys the fully quantized model: refuse a curriculum still ramping."""
        r = self.ratio()
        if r < 1.0:
            raise ConfigError(
                f"layer {quantizer.layer!r} ({quantizer.role}): the pege curriculum is at step "
                f"{int(self.step)} of {self.ramp_steps} (only {100 * r:.0f}% of elements "
                "quantized), so the trained model is not the one convert would deploy. Call "
                "rq.step(qat) once per optimizer step until ramp_steps, or prepare with a "
                "smaller estimator_options={'ramp_steps': ...}."
            )

    def describe(self) -> str:
        return f"r={self.ratio():.2f} (step {int(self.step)}/{self.ramp_steps}) γ={self.gamma:g}"

    def extra_repr(self) -> str:
        return self.describe()


def group_loss(states: list[PEGEState]) -> torch.Tensor | None:
    """Sum of the discretization losses recorded by the last training forward."""
    losses = [a for s in states if (a := s.aux_loss()) is not None]
    return torch.stack(losses).sum() if losses else None
