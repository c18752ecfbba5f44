"""TE computes for the IR ops relax has no equivalent of: ``im2col``, ``causal_mask``, ``slice``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.targets.tvm.adapter import te, tirx

__all__ = ["te_causal_mask", "te_im2col", "te_slice"]


def te_im2col(
    x: Any,
    *,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Any:
    """Channels-last patches ``x[N, H, W, C] -> [N, Ho, Wo, kh*kw*C]`` in ``(kh, kw, C)`` order.

    Zero padding (``0`` of ``x``'s dtype, so int8 codes and float32 both work); the padded
    taps are selected with ``if_then_else`` so no out-of-bounds element is ever read.
    """
    n, h, w, c = (int(d) for d in x.shape)
    (kh, kw), (sh, sw) = kernel, stride
    (ph, pw), (dh, dw) = padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    zero = tirx.const(0, x.dtype)

    def patch(b: Any, i: Any, j: Any, idx: Any) -> Any:
        tap, ch = idx // c, idx % c
        r = i * sh + (tap // kw) * dh - ph
        s = j * sw + (tap % kw) * dw - pw
        inside = tirx.all(r >= 0, r < h, s >= 0, s < w)
        return tirx.if_then_else(inside, x[b, r, s, ch], zero)

    return te.compute((n, ho, wo, kh * kw * c), patch, name="im2col")


def te_causal_mask(x: Any, *, fill: float, offset: int | None = None) -> Any:
    """``x[..., T, S]`` with ``fill`` where ``j > i + offset`` (default ``offset = S - T``).

    ``offset = S - T`` is ``rq.causal_mask`` (aligned to the bottom right, like
    ``tril(S - T)``); ``offset = 0`` is torch SDPA's ``is_causal`` (top left).
    """
    *_, t, s = x.shape
    off = s - t if offset is None else offset
    value = tirx.const(fill, x.dtype)

    def masked(*idx: Any) -> Any:
        i, j = idx[-2:]
        return tirx.Select(j > i + off, value, x(*idx))

    return te.compute(x.shape, masked, name="causal_mask")


def te_slice(x: Any, start: Any, *, axis: int, size: int, step: int) -> Any:
    """``x[..., start : start + size*step : step, ...]`` along ``axis``; ``start`` may be a var."""
    shape = list(x.shape)
    shape[axis] = size

    def at(*i: Any) -> Any:
        return x[(*i[:axis], start + i[axis] * step, *i[axis + 1 :])]

    return te.compute(shape, at, name="slice")
