"""The value every fake quantizer returns (its own file so estimators can build it without
importing the quantizer that calls them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FakeQuantResult"]


@dataclass(frozen=True)
class FakeQuantResult:
    """``y = scale * codes + offset`` per block; shapes ``(..., nb, B)`` and ``(..., nb, 1)``.

    ``codes`` are in the stored alphabet: the {0, 1} codes of the 1-bit min/max grid come
    back as ±1 with ``scale/2`` and ``offset + scale/2`` (the same values), so every 1-bit
    operand reaches ``convert`` and the XNOR-popcount kernel in one alphabet.
    """

    y: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
