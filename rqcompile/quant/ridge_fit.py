"""The ridge dequantizer as one autograd node with a closed-form backward (docs/method.md#the-ridge-dequantizer).

:func:`rqcompile.quant.estimators.ridge_params` is the readable definition: the fit written as
a dozen small torch ops that autograd differentiates. In a QAT step that costs about 30 passes
over every quantized tensor (each op materialises a block-sized intermediate, and autograd
adds ``neg``/``expand``/accumulate passes of its own), which made a ridge training step about
1.35x an STE step on the demo model. :func:`ridge_fake_quant` computes the same values and
the same gradient with the per-block statistics reduced to a few sums and the per-element
backward written out: about 9 passes forward and 7 backward, two of each only reads.

What it differentiates. Given the dense target ``x``, integer codes ``code`` and the detached
grid ``s_f``, the training forward of docs/method.md#codes is

    q = (x_s - b_f)/s_f + δ   (noise injection: value ``code``, ``dq/dx = 1/s_f``)
    scale, offset = ridge fit of x on q   (statistics attached)
    y = scale·q + offset

(``x_s`` is ``x`` with a detached sparsity perturbation, so ``dx_s/dx = 1`` too.) The node
returns ``(y, scale, offset)`` and the gradient w.r.t. ``x`` through *both* the target and the
codes, so callers pass ``x`` once and skip building ``q`` with autograd.

Backward, affine, per block of B with ``q̃ = q - q̄``, ``x̃ = x - x̄``, ``D = V + λ``,
``a = C/D``, upstream ``u = ∂L/∂y``, ``g_s = ∂L/∂scale``, ``g_o = ∂L/∂offset``:

    G_o = Σu + g_o          G_s = Σ u·q̃ + g_s - q̄·g_o          dC = G_s/D
    ∂L/∂x (target)  = (dC·q̃ + G_o)/B
    ∂L/∂q           = a·u + (dC/B)(x̃ - 2a·q̃) - a·G_o/B
    ∂L/∂x           = ∂L/∂x (target) + ∂L/∂q / s_f

(the terms through x̄ and q̄ inside C and V vanish because Σx̃ = Σq̃ = 0). Linear, with
``N = mean(q·x)``, ``M = mean(q²)``, ``a = N/(M+λ)``, ``dN = (Σ u·q + g_s)/(M+λ)``:

    ∂L/∂x = (a/s_f)·u + dN/(B·s_f)·x + (dN/B)(1 - 2a/s_f)·q

Both reduce to docs/method.md#which-statistics-carry-gradient with ``g_s = g_o = 0``. A zero denominator (λ = 0 and a
constant-code block) takes the same safe path as ``ridge_params``: ``a = 0`` and no gradient
through the statistics. ``tests/quant/test_ridge_fit.py`` checks values and gradients against
``ridge_params`` under autograd, and the gradient against finite differences, in float64.

Precision: the statistics are computed in the input's dtype (the caller passes fp32 or fp64,
as for ``ridge_params``), centred before the products as ``ridge_params`` does, so there is no
``E[xq] - E[x]E[q]`` cancellation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

__all__ = ["ridge_fake_quant"]


def _block_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(-1, keepdim=True)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor, lam: float) -> torch.Tensor:
    """``num/den``, or 0 where ``den == 0`` (only possible when λ = 0, as den = V + λ ≥ λ)."""
    if lam > 0:
        return num / den
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)


class _RidgeFakeQuant(torch.autograd.Function):
    """``(x, code, s_f) -> (y, scale, offset)``; see the module docstring.

    Block-sized temporaries are few and reused (``out=``): on CPU a fresh multi-MB tensor
    costs a page-faulting pass of its own, as much as the arithmetic.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, code: torch.Tensor, s_f: torch.Tensor, lam: float, linear: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        n = x.shape[-1]  # block means divide by n, as Tensor.mean does (same rounding)
        ctx.linear, ctx.lam = linear, lam
        if linear:
            buf = torch.mul(code, x)
            num = _block_sum(buf).div_(n)  # mean(q·x)
            den = _block_sum(torch.mul(code, code, out=buf)).div_(n).add_(lam)
            scale = _safe_ratio(num, den, lam)
            offset = torch.zeros_like(scale)  # no offset term, no gradient (as ridge_params)
            ctx.mark_non_differentiable(offset)
            ctx.save_for_backward(x, code, s_f, scale, den)
            return torch.mul(code, scale, out=buf), scale, offset
        xm = x.mean(-1, keepdim=True)
        qm = code.mean(-1, keepdim=True)
        xc = x - xm
        qc = code - qm
        buf = torch.mul(xc, qc)
        cov = _block_sum(buf).div_(n)
        den = _block_sum(torch.mul(qc, qc, out=buf)).div_(n).add_(lam)
        scale = _safe_ratio(cov, den, lam)
        offset = xm - scale * qm
        # scale·code + offset, the deployed dequantizer, rounded as ridge_params' users round
        # it (addcmul fuses into an FMA on AVX2 and would change the last bit of y)
        y = torch.mul(code, scale, out=buf).add_(offset)
        ctx.save_for_backward(xc, qc, s_f, scale, den, qm)
        return y, scale, offset

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, gy: torch.Tensor | None, gs: torch.Tensor | None, go: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if ctx.linear:
            x, q, s_f, a, den = ctx.saved_tensors
        else:
            x, q, s_f, a, den, qm = ctx.saved_tensors  # x, q are the centred x̃, q̃ here
        inv_b = 1.0 / x.shape[-1]
        r = a / s_f
        if gy is not None:
            g = torch.mul(gy, q)
            g_s = _block_sum(g)  # Σ u·q̃ (Σ u·q when linear)
            g_o = None if ctx.linear else _block_sum(gy)
            torch.mul(gy, r, out=g)  # reuse the product's memory for the result
        else:
            g = torch.zeros_like(x)
            g_s = torch.zeros_like(a)
            g_o = None if ctx.linear else torch.zeros_like(a)
        if gs is not None:
            g_s = g_s + gs
        if go is not None and g_o is not None:
            g_o = g_o + go
            g_s = g_s - qm * go
        d_c = _safe_ratio(g_s, den, ctx.lam).mul_(inv_b)  # dC/B (dN/B when linear)
        # ∂L/∂x = r·u + (dC/B)/s_f·x + (dC/B)(1 - 2r)·q + (G_o/B)(1 - r)
        g.addcmul_(x, d_c / s_f).addcmul_(q, d_c * (1 - 2 * r))
        if g_o is not None:
            g.add_(g_o.mul_(inv_b).mul_(1 - r))
        return g, None, None, None, None


def ridge_fake_quant(
    x: torch.Tensor, code: torch.Tensor, s_f: torch.Tensor, lam: float, linear: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge-dequantize blocked codes; ``(y, scale, offset)`` with the closed-form backward.

    Args:
        x: dense target ``(..., nb, B)`` (fp32 or fp64); the gradient flows to it through the
            target and through the noise-injected codes (``dq/dx = 1/s_f``).
        code: integer-valued codes, same shape and dtype, no gradient.
        s_f: the detached grid scale ``(..., nb, 1)``.
        lam: ridge strength λ.
        linear: the linear fit (no offset) instead of the affine one.

    Equal in value and gradient, up to float rounding, to ``ridge_params(x, q, ...)`` applied
    to ``q = (x_s - b_f)/s_f + δ``, followed by ``y = scale·q + offset``.
    """
    y, scale, offset = _RidgeFakeQuant.apply(x, code, s_f, lam, linear)
    return y, scale, offset
