"""Dequantizers ("estimators"): how codes become values, and so how gradients flow.

Every estimator maps a block's codes ``q`` (noise-injected, ``dq/dz = 1``) to
``y = scale * q + offset`` with per-block ``scale`` and ``offset``. Training uses ``y``;
``convert`` stores ``scale`` and ``offset`` next to the integer codes, so one integer lowering
(METHOD.md §3.1: one integer GEMM + rank-1 corrections) serves every estimator.

Estimators are looked up in :data:`ESTIMATORS` by name (a table, not an if/else chain).

* ``ridge`` (default, the paper's method): affine ``scale = C/(V+λ)``,
  ``offset = x̄ - scale·q̄`` with ``C = mean((x-x̄)(q-q̄))``, ``V = mean((q-q̄)²)``; linear
  ``scale = mean(q·x)/(mean(q²)+λ)``, ``offset = 0``. The statistics stay attached to the
  autograd graph, which creates the corrective gradient path (METHOD.md §2.6).
* ``ste``: ``scale = s_f``, ``offset = b_f`` (plain dequantization; the baseline).

**λ = 0 safe path.** With λ = 0 and a constant-code block (V = 0) the ridge fit is 0/0. We use
the minimum-norm least-squares solution instead: ``scale = 0`` and so ``y = x̄`` (affine) or
``y = 0`` (linear), with a finite gradient. A denominator that is exactly zero is the only case
handled; tiny denominators are left as they are, so λ = 0's instability remains measurable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

__all__ = ["ESTIMATORS", "Estimator", "ridge_params", "ste_params"]


class Estimator(Protocol):
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


ESTIMATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "ridge": ridge_params,
    "ste": ste_params,
}
