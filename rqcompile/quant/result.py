"""The value every fake quantizer returns (its own file so estimators can build it without
importing the quantizer that calls them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FakeQuantResult"]


@dataclass(frozen=True)
class FakeQuantResult:
    """``y = scale * codes + offset`` per block; shapes ``(..., nb, B)`` and ``(..., nb, 1)``."""

    y: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
