"""rqcompile: train and run neural networks at any precision and 2:4 sparsity.

Ridge-regression QAT (Ye et al., arXiv 2409.09245) on torch.fx, integer kernels via Apache
TVM. Importing this package loads neither TVM nor CUDA.

Example:
    >>> import torch, rqcompile as rq
    >>> qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4")
    >>> type(qat).__name__
    'Linear'
"""

from rqcompile.api import build, convert, explain, export_mlir, load, lower, prepare
from rqcompile.config import (
    PRESETS,
    LayerSpec,
    NMSparsity,
    Override,
    PerChannel,
    PerGroup,
    PerTensor,
    QConfig,
    QuantSpec,
)
from rqcompile.checkpoint import load_qat, register_builder, save_qat
from rqcompile.debug.draw import draw, draw_diff
from rqcompile.debug.format import inspect
from rqcompile.errors import (
    ArtifactError,
    CaptureError,
    ConfigError,
    InputError,
    NumericsError,
    PassError,
    RQError,
    RQWarning,
    TargetError,
    UnsupportedOpError,
    VerifyError,
)
from rqcompile.passes.infra import DumpIR, PassContext, PrintAfter, Timing
from rqcompile.quant.hooks import aux_loss, distill_loss, step
from rqcompile.targets.compiled import CompiledModule
from rqcompile.version import __version__
from rqcompile.targets.target import Target


__all__ = [
    "PRESETS",
    "ArtifactError",
    "CaptureError",
    "CompiledModule",
    "ConfigError",
    "DumpIR",
    "InputError",
    "LayerSpec",
    "NMSparsity",
    "NumericsError",
    "Override",
    "PassContext",
    "PassError",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PrintAfter",
    "QConfig",
    "QuantSpec",
    "RQError",
    "RQWarning",
    "Target",
    "TargetError",
    "Timing",
    "UnsupportedOpError",
    "VerifyError",
    "aux_loss",
    "build",
    "convert",
    "distill_loss",
    "draw",
    "draw_diff",
    "explain",
    "export_mlir",
    "inspect",
    "load",
    "load_qat",
    "lower",
    "prepare",
    "register_builder",
    "save_qat",
    "step",
]
