"""Named pass lists for each stage. ``describe(stage)`` returns the pipeline string."""

from __future__ import annotations

from typing import Any

from rqcompile.errors import ConfigError

__all__ = ["describe", "prepare_passes"]


def prepare_passes(*, fold_batchnorm: bool = False) -> list[Any]:
    """``quantize-layers,quantize-attention``, after ``fold-batchnorm`` when asked for."""
    from rqcompile.passes.qat import FoldBatchNorm, QuantizeAttention, QuantizeLayers

    first = [FoldBatchNorm()] if fold_batchnorm else []
    return [*first, QuantizeLayers(), QuantizeAttention()]


_STAGES = {"prepare": prepare_passes}


def register_stage(name: str, factory: Any) -> None:
    """Used by later stages (convert, build) to publish their pass lists."""
    _STAGES[name] = factory


def describe(stage: str) -> str:
    """The comma-separated pass names of a stage, e.g. ``quantize-layers,quantize-attention``."""
    if stage not in _STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(sorted(_STAGES))}.")
    return ",".join(p.name for p in _STAGES[stage]())
