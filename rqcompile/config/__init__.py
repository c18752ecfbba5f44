"""Configuration values: specs, presets, QConfig."""

from rqcompile.config.presets import PRESETS, parse_preset
from rqcompile.config.qconfig import Override, QConfig, as_qconfig
from rqcompile.config.spec import (
    LayerSpec,
    NMSparsity,
    PerChannel,
    PerGroup,
    PerTensor,
    QuantSpec,
)

__all__ = [
    "PRESETS",
    "LayerSpec",
    "NMSparsity",
    "Override",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QConfig",
    "QuantSpec",
    "as_qconfig",
    "parse_preset",
]
