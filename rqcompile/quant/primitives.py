"""Quantization primitives on blocked tensors (docs/method.md#blocks to #codes). Pure torch.

Every function here works on a tensor ``xb`` of shape ``(..., nb, B)``: the reduction dimension
K split into ``nb`` blocks of ``B`` contiguous elements, last. Grids (``s_f``, ``b_f``) are
computed per block under ``no_grad`` (detached; docs/method.md#grids), over the *kept*
elements when the block is N:M-sparse and over all of them otherwise (a zero after a ReLU
counts).

Formats (``codes = clip(round(z), lo, hi)`` with ``z = (x - b_f) / s_f``), by grid name:

====================  ======  ===================================  ============================
format                grid    grid rule                            codes
====================  ======  ===================================  ============================
binary affine         bitnet  b_f = mean(x), s_f = mean|x - b_f|   sign(z) ∈ {-1, +1}, sign(0)=+1
binary affine         minmax  b_f = min, s_f = max - min           clip(round(z), 0, 1) ∈ {0, 1}
binary linear         bitnet  b_f = 0, s_f = mean|x|               sign(z) ∈ {-1, +1}
binary linear         minmax  b_f = 0, s_f = absmax                sign(z) ∈ {-1, +1}
ternary (1.5)         bitnet  b_f = 0, s_f = mean|x|               clip(round(z), -1, 1)
ternary (1.5)         minmax  b_f = 0, s_f = absmax                clip(round(z), -1, 1)
b-bit affine          minmax  b_f = min, s_f = (max-min)/(2^b-1)   clip(round(z), 0, 2^b-1)
b-bit symmetric       minmax  b_f = 0, s_f = absmax/(2^(b-1)-1)    clip(round(z), ±(2^(b-1)-1))
====================  ======  ===================================  ============================

The default grid is ``bitnet`` at 1 and 1.5 bits and ``minmax`` otherwise.

Rounding is half-to-even (``torch.round``); integer kernels must match (docs/method.md#rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rqcompile.errors import NumericsError

__all__ = [
    "EPS",
    "QFormat",
    "code_range",
    "grid",
    "make_codes",
    "nm_mask",
    "reuse_buffers",
    "to_blocks",
]

EPS = 1e-12


@dataclass(frozen=True)
class QFormat:
    """The code alphabet of one operand: ``bits`` in {1, 1.5, 2..8}, affine or symmetric, and
    the grid rule (``"minmax"`` or ``"bitnet"``; ``None`` = the format's default, see
    :data:`rqcompile.config.spec.GRIDS`)."""

    bits: float
    symmetric: bool
    grid: str | None = None

    def __post_init__(self) -> None:
        if self.grid is None:
            object.__setattr__(self, "grid", "bitnet" if self.bits in (1, 1.5) else "minmax")
        elif self.grid not in ("minmax", "bitnet"):
            raise NumericsError(f"QFormat: unknown grid {self.grid!r}; use 'minmax' or 'bitnet'.")
        elif self.grid == "bitnet" and self.bits not in (1, 1.5):
            raise NumericsError(f"QFormat: grid 'bitnet' needs bits 1 or 1.5, got {self.bits}.")

    @property
    def zero_one(self) -> bool:
        """True for the 1-bit affine min/max grid, whose codes are {0, 1} (not ±1)."""
        return self.bits == 1 and not self.symmetric and self.grid == "minmax"

    @property
    def linear(self) -> bool:
        """True when the dequantizer has no offset term (symmetric, ternary, linear binary)."""
        return self.symmetric


def code_range(fmt: QFormat) -> tuple[int, int]:
    """Inclusive (lo, hi) of the integer codes of ``fmt`` while training.

    The 1-bit min/max affine grid trains on {0, 1}; :func:`fake_quant_blocks` hands its codes
    on as ±1 (``scale/2``, ``offset + scale/2``), the alphabet every 1-bit kernel stores.
    """
    if fmt.zero_one:
        return 0, 1
    if fmt.bits in (1, 1.5):
        return -1, 1
    b = int(fmt.bits)
    if fmt.symmetric:
        top = 2 ** (b - 1) - 1
        return -top, top
    return 0, 2**b - 1


def to_blocks(x: torch.Tensor, block: int, *, where: str = "tensor") -> torch.Tensor:
    """``(..., K) -> (..., K // block, block)``; a typed error when ``block`` does not divide K."""
    k = x.shape[-1]
    if block < 1 or k % block:
        raise NumericsError(
            f"{where}: reduction size K={k} is not a multiple of the block size {block}. "
            f"Use a block that divides {k} (e.g. block_size={_divisor_hint(k, block)}) or "
            f"per-channel granularity (block_size=None)."
        )
    return x.reshape(*x.shape[:-1], k // block, block)


def _divisor_hint(k: int, block: int) -> int:
    for d in range(min(block, k), 0, -1):
        if k % d == 0:
            return d
    return k


@torch.no_grad()
def nm_mask(xb: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest |x| of each ``m`` consecutive elements (last dim).

    Ties are broken by ``topk`` (lowest index first on equal magnitude). No gradient.
    """
    k = xb.shape[-1]
    if k % m:
        raise NumericsError(f"{n}:{m} sparsity needs the block size ({k}) to be a multiple of {m}.")
    g = xb.abs().reshape(*xb.shape[:-1], k // m, m)
    idx = g.topk(n, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(xb.shape)


@torch.no_grad()
def grid(
    xs: torch.Tensor, fmt: QFormat, *, sparse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block ``(s_f, b_f)``, each of shape ``(..., nb, 1)``, detached.

    ``xs`` is the (possibly sparsified) blocked tensor. ``sparse=True`` says it is N:M-sparse:
    then the ``bitnet`` means are taken over the kept (non-zero) elements, so that the backward
    gain stays about 1 (docs/method.md#grids). In a dense block every element counts, zeros
    included: a ReLU output's zeros are values, not pruned slots (counting only the non-zeros
    made ``s_f`` about twice too large after a ReLU).
    """
    if xs.dtype != torch.float64:
        xs = xs.float()
    zero = torch.zeros_like(xs[..., :1])
    if fmt.grid == "minmax" and fmt.bits in (1, 1.5):  # the plain grids of the low widths
        if fmt.zero_one:
            mn, mx = xs.amin(-1, keepdim=True), xs.amax(-1, keepdim=True)
            return (mx - mn).clamp_min(EPS), mn
        return xs.abs().amax(-1, keepdim=True).clamp_min(EPS), zero
    if fmt.bits == 1 or fmt.bits == 1.5:
        # Means accumulate in float64 and round once to the working dtype, so that any
        # kernel that also sums in float64 reproduces the same threshold bit for bit.
        # Written with sum(dtype=float64) and a non-zero count Σ sign|x|: no float64 copy and
        # no bool tensor, same values (on CPU a bool compare-and-count is 5x slower).
        f64, reuse = torch.float64, reuse_buffers()
        if fmt.bits == 1 and not fmt.symmetric:
            b = (xs.sum(-1, keepdim=True, dtype=f64) / xs.shape[-1]).to(xs.dtype)
            dev = torch.sub(xs, b)
            dev = dev.abs_() if reuse else dev.abs()
        else:
            b, dev = zero, xs.abs()
        total = dev.sum(-1, keepdim=True, dtype=f64)
        if not sparse:
            return (total / xs.shape[-1]).to(xs.dtype).clamp_min(EPS), b
        if b is not zero:  # the count needs |x|, not |x - b|
            dev = torch.abs(xs, out=dev) if reuse else xs.abs()
        nonzero = dev.sign_() if reuse else dev.sign()
        kept = nonzero.sum(-1, keepdim=True, dtype=f64).clamp_min(1)
        return (total / kept).to(xs.dtype).clamp_min(EPS), b
    _, hi = code_range(fmt)
    if fmt.symmetric:
        s = (xs.abs().amax(-1, keepdim=True) / hi).clamp_min(EPS)
        return s, zero
    mn, mx = xs.amin(-1, keepdim=True), xs.amax(-1, keepdim=True)
    return ((mx - mn) / hi).clamp_min(EPS), mn


def make_codes(z: torch.Tensor, fmt: QFormat, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Integer-valued codes (float dtype) from the pre-quantization transform ``z``. No grad.

    ``out`` may be ``z`` itself (codes written in place when ``z`` is no longer needed); it is
    ignored inside traced graphs (:func:`reuse_buffers`).
    """
    with torch.no_grad():
        lo, hi = code_range(fmt)
        if not reuse_buffers():  # the definition, functional
            if fmt.bits == 1 and not fmt.zero_one:
                return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
            return torch.clamp(torch.round(z), lo, hi)
        if fmt.bits == 1 and not fmt.zero_one:
            # sign(z) with sign(0) = +1 as sign(sign(z) + 1/2), NaN -> -1 first (torch.sign
            # maps NaN to 0): the values of the definition, without its bool tensor, which is
            # 6x slower on CPU.
            return torch.nan_to_num(z, nan=-1.0, out=out).sign_().add_(0.5).sign_()
        return torch.round(z, out=out).clamp_(lo, hi)


def reuse_buffers() -> bool:
    """Whether quantization code may write into its own temporaries (in place, ``out=``).

    In eager mode it does: on CPU every fresh block-sized tensor costs a page-faulting pass of
    its own, as much as the arithmetic. Inside ``torch.compile``/``torch.export`` tracing it
    does not: traced graphs stay functional (torch-mlir imports an exported graph without
    functionalizing it, and a compiler fuses the ops anyway). Both give the same values.
    """
    return not torch.compiler.is_compiling()
