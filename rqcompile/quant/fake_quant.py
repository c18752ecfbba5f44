"""Fake quantization of blocked tensors: sparsify → grid → noisy codes → dequantize.

This is the training-time forward of docs/method.md#the-training-forward (stages 0–3) in
one function. The value of
the codes is the integer code; their gradient w.r.t. the input is the identity (noise
injection with a detached rounding residual, ``q = z + (code - z).detach()``).
"""

from __future__ import annotations

import torch

from rqcompile.quant import estimators as _estimators
from rqcompile.quant.primitives import QFormat, grid, make_codes, nm_mask, reuse_buffers
from rqcompile.quant.result import FakeQuantResult

__all__ = ["FakeQuantResult", "fake_quant_blocks"]


def fake_quant_blocks(
    xb: torch.Tensor,
    fmt: QFormat,
    *,
    estimator: str = "ridge",
    lam: float = 0.01,
    nm: tuple[int, int] | None = None,
) -> FakeQuantResult:
    """Quantize and dequantize a blocked tensor ``(..., nb, B)`` (blocks along the last dim).

    Args:
        xb: values, blocks along the last dimension. The ridge target is this dense tensor.
        fmt: code alphabet.
        estimator: key of :data:`rqcompile.quant.estimators.ESTIMATORS`.
        lam: ridge strength λ (ignored by ``ste``).
        nm: ``(n, m)`` magnitude sparsity applied before quantization (weights only).

    Returns:
        The dequantized tensor (same dtype as ``xb``) and the integer codes and per-block
        dequantization parameters that ``convert`` stores.

    Example:
        >>> x = torch.tensor([[0.9, -0.3, 0.2, 1.4]])
        >>> r = fake_quant_blocks(x.reshape(1, 1, 4), QFormat(2, False))
        >>> r.codes.flatten().tolist()
        [2.0, 0.0, 1.0, 3.0]
    """
    est = _estimators.ESTIMATORS[estimator]
    if est.blocks is not None:  # an estimator with its own grid and codes (gdnsq)
        return est.blocks(xb, fmt, lam=lam, nm=nm)
    dtype = xb.dtype
    # Statistics in fp32 even under bf16/fp16 autocast (docs/method.md#which-statistics-carry-gradient); fp64 stays fp64.
    x32 = xb if xb.dtype == torch.float64 else xb.float()
    if nm is not None:
        mask = nm_mask(x32, *nm)
        xs = x32 + (x32 * mask - x32).detach()  # sparse value, identity gradient
    else:
        mask = None
        xs = x32
    s_f, b_f = grid(xs, fmt, sparse=nm is not None)
    # The whole dequantizer as one autograd node (ridge_fit.py says why); traced graphs take
    # the definition instead (reuse_buffers: they stay functional).
    fused = est.fused if reuse_buffers() else None
    if fused is not None:  # z needs no graph: codes are written over it
        with torch.no_grad():
            z = torch.sub(xs, b_f).div_(s_f)
            code = make_codes(z, fmt, out=z)
    else:
        z = (xs - b_f) / s_f
        code = make_codes(z, fmt)
    if mask is not None:
        code = code * mask  # pruned slots are exactly code 0 (linear formats only)
    if fused is not None:
        y, scale, offset = fused(x32, code, s_f, lam, fmt.linear)
    else:
        q = z + (code - z).detach()
        scale, offset = est.dequant(x32, q, s_f, b_f, lam, fmt.linear)
        y = scale * q + offset
    if fmt.zero_one:  # {0,1} -> ±1: s·c + o = (s/2)(2c - 1) + (o + s/2)
        half = scale / 2
        code, scale, offset = 2 * code - 1, half, offset + half
    return FakeQuantResult(y=y.to(dtype), codes=code, scale=scale, offset=offset)
