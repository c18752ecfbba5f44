"""rqcompile: train and run neural networks at any precision and 2:4 sparsity.

Ridge-regression QAT (Ye et al., arXiv 2409.09245) on torch.fx, integer kernels via Apache
TVM. Importing this package loads neither TVM nor CUDA.

Example:
    >>> import torch, rqcompile as rq
    >>> qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4")
    >>> type(qat).__name__
    'Linear'
"""

from rqcompile.api import build, convert, explain, export_mlir, generate, load, lower, prepare
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
    FormatError,
    InputError,
    NumericsError,
    PassError,
    RQError,
    RQWarning,
    TargetError,
    UnsupportedOpError,
    UsageError,
    VerifyError,
)
from rqcompile.parity import ParityReport, check_parity
from rqcompile.passes.infra import DumpIR, PassContext, PrintAfter, Timing
from rqcompile.quant.hooks import aux_loss, distill_loss, step
from rqcompile.targets.compiled import CompiledModule
from rqcompile.targets.dynamic import DynamicModule
from rqcompile.version import __version__
from rqcompile.targets.target import Target


__all__ = [
    "PRESETS",
    "ArtifactError",
    "CaptureError",
    "CompiledModule",
    "ConfigError",
    "DumpIR",
    "DynamicModule",
    "FormatError",
    "InputError",
    "LayerSpec",
    "NMSparsity",
    "NumericsError",
    "Override",
    "ParityReport",
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
    "UsageError",
    "VerifyError",
    "aux_loss",
    "build",
    "check_parity",
    "convert",
    "distill_loss",
    "draw",
    "draw_diff",
    "explain",
    "export_mlir",
    "inspect",
    "load",
    "load_qat",
    "generate",
    "lower",
    "prepare",
    "register_builder",
    "save_qat",
    "step",
]

# Every public entry point raises only RQError subclasses (rqcompile/guard.py): anything else
# that escapes becomes the entry point's error class, naming the original type.
from rqcompile import guard as _guard  # noqa: E402

prepare = _guard.entry_point("rq.prepare", CaptureError)(prepare)
convert = _guard.entry_point("rq.convert", UnsupportedOpError)(convert)
build = _guard.entry_point("rq.build", TargetError)(build)
lower = _guard.entry_point("rq.lower", TargetError)(lower)
generate = _guard.entry_point("rq.generate", UsageError)(generate)
load = _guard.entry_point("rq.load", ArtifactError)(load)
load_qat = _guard.entry_point("rq.load_qat", ArtifactError)(load_qat)
save_qat = _guard.entry_point("rq.save_qat", ArtifactError)(save_qat)
register_builder = _guard.entry_point("rq.register_builder", ConfigError)(register_builder)
inspect = _guard.entry_point("rq.inspect")(inspect)
explain = _guard.entry_point("rq.explain")(explain)
draw = _guard.entry_point("rq.draw")(draw)
draw_diff = _guard.entry_point("rq.draw_diff")(draw_diff)
export_mlir = _guard.entry_point("rq.export_mlir", TargetError)(export_mlir)
check_parity = _guard.entry_point("rq.check_parity", NumericsError)(check_parity)
CompiledModule.save = _guard.entry_point("CompiledModule.save", ArtifactError)(  # type: ignore[method-assign]
    CompiledModule.save
)
CompiledModule.generate = _guard.entry_point("exe.generate", TargetError)(  # type: ignore[method-assign]
    CompiledModule.generate
)
CompiledModule.__call__ = _guard.entry_point("compiled model call", TargetError)(  # type: ignore[method-assign]
    CompiledModule.__call__
)
DynamicModule.prebuild = _guard.entry_point("DynamicModule.prebuild", TargetError)(  # type: ignore[method-assign]
    DynamicModule.prebuild
)
del _guard
