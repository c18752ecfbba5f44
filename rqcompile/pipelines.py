"""Named pass lists for each stage. ``describe(stage)`` returns the pipeline string.

==========  ==========================================================================
stage       passes
==========  ==========================================================================
prepare     [fold-batchnorm,] quantize-layers, quantize-attention      (fx → fx)
convert     translate (fx → rq IR), then fold-constants, eliminate-dead-code
build       the target's list: for llvm ``targets/tvm/pipelines.cpu_phases``:
            fuse-attention, select-kernels, fuse-prologue, pack-weights (rq IR → rq IR),
            then the TVM phases emit ... build; ``describe("build")`` shows this host's
==========  ==========================================================================
"""

from __future__ import annotations

from typing import Any

from rqcompile.errors import ConfigError
from rqcompile.passes.infra import pass_text
from rqcompile.passes.ir import EliminateDeadCode, FoldConstants
from rqcompile.passes.qat import FoldBatchNorm, QuantizeAttention, QuantizeLayers

__all__ = ["convert_passes", "describe", "prepare_passes", "register_stage"]


def prepare_passes(*, fold_batchnorm: bool = False) -> list[Any]:
    """``quantize-layers,quantize-attention``, after ``fold-batchnorm`` when asked for."""
    first = [FoldBatchNorm()] if fold_batchnorm else []
    return [*first, QuantizeLayers(), QuantizeAttention()]


def convert_passes() -> list[Any]:
    """``fold-constants,eliminate-dead-code``: run on the IR that translation produced."""
    return [FoldConstants(), EliminateDeadCode()]


def _build_passes() -> list[Any]:
    """The llvm pipeline for this machine (needs TVM)."""
    from rqcompile.errors import TargetError

    try:
        from rqcompile.targets.tvm.pipelines import pipeline_for, tvm_target
    except ImportError as e:
        raise TargetError(f"describe('build') needs Apache TVM: {e}") from e
    from rqcompile.targets.target import Target

    return list(pipeline_for(tvm_target(Target.parse("llvm"))))


_STAGES = {"prepare": prepare_passes, "convert": convert_passes, "build": _build_passes}


def register_stage(name: str, factory: Any) -> None:
    """Publish another stage's pass list."""
    _STAGES[name] = factory


def describe(stage: str) -> str:
    """The pipeline string of a stage, e.g. ``fold-constants,eliminate-dead-code``."""
    if stage not in _STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(sorted(_STAGES))}.")
    return ",".join(pass_text(p) for p in _STAGES[stage]())
