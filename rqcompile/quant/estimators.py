"""Dequantizers ("estimators"): how codes become values, and so how gradients flow.

Every estimator maps a block's codes ``q`` (noise-injected, ``dq/dz = 1``) to
``y = scale * q + offset`` with per-block ``scale`` and ``offset``. Training uses ``y``;
``convert`` stores ``scale`` and ``offset`` next to the integer codes, so one integer lowering
(docs/method.md#the-affine-shortcut: one integer GEMM + rank-1 corrections) serves every estimator.

Estimators are looked up in :data:`ESTIMATORS` by name (a table, not an if/else chain).

* ``ridge`` (default, the paper's method): affine ``scale = C/(V+λ)``,
  ``offset = x̄ - scale·q̄`` with ``C = mean((x-x̄)(q-q̄))``, ``V = mean((q-q̄)²)``; linear
  ``scale = mean(q·x)/(mean(q²)+λ)``, ``offset = 0``. The statistics stay attached to the
  autograd graph, which creates the corrective gradient path (docs/method.md#which-statistics-carry-gradient).
* ``ste``: ``scale = s_f``, ``offset = b_f`` (plain dequantization; the baseline).
* ``ridge_detached``: the ridge fit computed under ``no_grad`` (an ablation). Same forward as
  ``ridge`` and the same deployed quantizer; the gradient loses the corrective path.
* ``pege`` (docs/method.md#pege): the STE dequantizer, plus a per-quantizer curriculum state that
  mixes float and quantized elements during training and a discretization-error loss
  (:mod:`rqcompile.quant.pege`).
* ``gdnsq`` (docs/method.md#gdnsq): its own grid (learned bit width and clamp bounds) with the STE
  dequantizer ``scale = Δ``, ``offset = l`` (:mod:`rqcompile.quant.gdnsq`).

Every entry of :data:`ESTIMATORS` is an :class:`Estimator` record: the dequantizer, the name
``rq.quantize`` uses at run time, an optional stateless block quantizer (for run-time
activation quantization), an optional factory for per-quantizer training state, the options
it accepts and the model-level auxiliary loss over its states.

**λ = 0 safe path.** With λ = 0 and a constant-code block (V = 0) the ridge fit is 0/0. We use
the minimum-norm least-squares solution instead: ``scale = 0`` and so ``y = x̄`` (affine) or
``y = 0`` (linear), with a finite gradient. A denominator that is exactly zero is the only case
handled; tiny denominators are left as they are, so λ = 0's instability remains measurable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch

__all__ = [
    "ESTIMATORS",
    "Dequantizer",
    "Estimator",
    "EstimatorState",
    "ridge_detached_params",
    "MINMAX_RUNTIMES",
    "ridge_params",
    "runtime_quantizer",
    "ste_params",
]


class EstimatorState(Protocol):
    """What ``RQQuantize`` calls on the training state of a stateful estimator (an nn.Module
    child ``estimator_state``; see ``pege.PEGEState`` and ``gdnsq.GDNSQState``)."""

    def advance(self) -> int:
        """Add one to the step buffer (``rq.step``); return the new step."""
        ...

    def fake_quant(self, xb: torch.Tensor) -> Any:
        """A ``FakeQuantResult`` from the state's own grid, or ``None`` for the standard one."""
        ...

    def after_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The operand's output from its input ``x`` and fake-quantized ``y``."""
        ...

    def finalize_(self, quantizer: Any) -> int | None:
        """Make the state final for ``convert``; return a new deployed width, if any."""
        ...

    def describe(self) -> str: ...


class Dequantizer(Protocol):
    def __call__(
        self,
        xb: torch.Tensor,
        q: torch.Tensor,
        s_f: torch.Tensor,
        b_f: torch.Tensor,
        lam: float,
        linear: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def ridge_params(
    xb: torch.Tensor,
    q: torch.Tensor,
    s_f: torch.Tensor,
    b_f: torch.Tensor,
    lam: float,
    linear: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge fit of the dense target ``xb`` on codes ``q``, per block (last dim).

    Returns ``(scale, offset)`` of shape ``(..., nb, 1)``. Statistics are computed in fp32 and
    are *not* detached.
    """
    if xb.dtype != torch.float64:  # fp32 statistics, even under autocast; fp64 stays fp64
        xb, q = xb.float(), q.float()
    if linear:
        num = (q * xb).mean(-1, keepdim=True)
        den = (q * q).mean(-1, keepdim=True) + lam
        return _safe_div(num, den), torch.zeros_like(num)
    xm, qm = xb.mean(-1, keepdim=True), q.mean(-1, keepdim=True)
    qc = q - qm
    cov = ((xb - xm) * qc).mean(-1, keepdim=True)
    var = (qc * qc).mean(-1, keepdim=True)
    scale = _safe_div(cov, var + lam)
    return scale, xm - scale * qm


def ste_params(
    xb: torch.Tensor,
    q: torch.Tensor,
    s_f: torch.Tensor,
    b_f: torch.Tensor,
    lam: float,
    linear: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straight-through baseline: the quantizer's own grid, ``y = s_f·q + b_f``."""
    return s_f, b_f


def ridge_detached_params(
    xb: torch.Tensor,
    q: torch.Tensor,
    s_f: torch.Tensor,
    b_f: torch.Tensor,
    lam: float,
    linear: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge fit with every statistic detached (an ablation; docs/method.md#estimators).

    The forward equals ``ridge``. The gradient w.r.t. ``x`` is ``(scale/s_f)·u``: a rescaled
    STE with no corrective (rounding-error) term and no path through the block means.
    """
    with torch.no_grad():
        return ridge_params(xb, q, s_f, b_f, lam, linear)


def _no_loss(states: list[Any]) -> torch.Tensor | None:
    return None


@dataclass(frozen=True)
class Estimator:
    """One row of :data:`ESTIMATORS`.

    Attributes:
        dequant: per-block ``(scale, offset)`` from the dense target, the noisy codes and the
            grid (stage 3 of docs/method.md#the-training-forward).
        runtime: the ``estimator`` attribute of ``rq.quantize`` that reproduces this
            estimator's *deployed* activation quantizer (``pege`` deploys as ``ste``).
        blocks: optional stateless quantizer ``(xb, fmt, lam, nm) -> FakeQuantResult`` that
            replaces the standard grid/codes pipeline (``gdnsq`` at a fixed width).
        state: optional factory ``(quantizer, options) -> nn.Module`` of per-quantizer
            training state (buffers and parameters, so it lives in ``state_dict``).
        options: accepted ``estimator_options`` and their defaults (the type of the default
            is the type an option must have).
        group_loss: auxiliary loss over all states of this estimator in one model
            (``rq.aux_loss`` sums these); ``None`` when it has none.
        check: optional ``(LayerSpec) -> str | None``: why a layer spec cannot use this
            estimator (``None`` when it can).
        fused: optional ``(x, code, s_f, lam, linear) -> (y, scale, offset)``: ``dequant``
            and ``y = scale·q + offset`` as one autograd node, equal in value and in gradient
            w.r.t. ``x`` (through the target and through ``q``, ``dq/dx = 1/s_f``) up to
            float rounding. ``fake_quant_blocks`` uses it when set; it exists for speed
            (``ridge_fit.py`` says why), ``dequant`` stays the definition.
    """

    dequant: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    runtime: str
    blocks: Callable[..., Any] | None = None
    state: Callable[..., Any] | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    group_loss: Callable[[list[Any]], torch.Tensor | None] = _no_loss
    check: Callable[[Any], str | None] | None = None
    fused: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None


#: Deployed activation quantizers of the min/max grid at 1 and 1.5 bits (not those widths'
#: default grid): run-time name → ``(estimator, grid)`` (``runtime_quantizer`` says which
#: quantizer deploys as which). Every target implements them
#: (docs/method.md#deployment-of-the-grids).
MINMAX_RUNTIMES: dict[str, tuple[str, str]] = {
    "ridge_minmax": ("ridge", "minmax"),
    "ste_minmax": ("ste", "minmax"),
}


def runtime_quantizer(estimator: str, fmt: Any) -> str:
    """The ``estimator`` attribute of the ``rq.quantize`` op that deploys this quantizer.

    The estimator's ``runtime`` name when ``fmt`` uses its default grid. The 1-bit affine
    min/max grid with STE dequantization is exactly gdnsq's fixed-width run-time quantizer
    (min/max grid, round-half-even codes, ``y = Δ·c + min``), so it deploys as ``"gdnsq"``,
    which every target implements. Other min/max grids at 1 and 1.5 bits deploy as
    :data:`MINMAX_RUNTIMES` entries.
    """
    name = ESTIMATORS[estimator].runtime
    default = fmt.grid == ("bitnet" if fmt.bits in (1, 1.5) else "minmax")
    if default or name == "gdnsq":
        return name
    if name == "ste" and fmt.zero_one:
        return "gdnsq"
    return f"{name}_{fmt.grid}"


# pege/gdnsq import fake_quant, which reads this module's table at call time (not import
# time), so importing them here, after everything they need is defined, is acyclic.
from rqcompile.quant import gdnsq, pege  # noqa: E402
from rqcompile.quant.ridge_fit import ridge_fake_quant  # noqa: E402

#: Estimator name → :class:`Estimator`. ``config.spec.ESTIMATORS`` lists the same names.
ESTIMATORS: dict[str, Estimator] = {
    "ridge": Estimator(ridge_params, "ridge", fused=ridge_fake_quant),
    "ste": Estimator(ste_params, "ste"),
    "ridge_detached": Estimator(ridge_detached_params, "ridge"),
    "pege": Estimator(
        ste_params,
        "ste",
        state=pege.PEGEState.create,
        options=pege.OPTIONS,
        group_loss=pege.group_loss,
    ),
    "gdnsq": Estimator(
        ste_params,
        "gdnsq",
        blocks=gdnsq.runtime_blocks,
        state=gdnsq.GDNSQState.create,
        options=gdnsq.OPTIONS,
        group_loss=gdnsq.group_loss,
        check=gdnsq.check_spec,
    ),
}
